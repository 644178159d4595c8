"""The Orthanc Explorer extension: unit-tested with a fake ``orthanc`` module, and end to end
in a real Orthanc (Python plugin loaded) shown in a real headless Chromium: the study page
shows radnode's AI result and its Confirm button records the judgement."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import httpx

from ai_node.pipeline import AnalysisPipeline
from ai_node.synth import StudySpec
from ai_node.tables import feedback
from dicomweb.app import create_app
from pacs_link.sender import OutboxSender
from tests.support.analysis import add_study, run_all
from tests.support.browser import chromium, serve, wait
from tests.support.orthanc_peer import OrthancPacs
from tests.support.radnode_process import REPO
from tests.support.viewer import RADIOLOGIST, VIEWER, make_node
from viewer_plugin.explorer import FEEDBACK_ROUTE, RESULT_ROUTE, register

ARTIFACTS = REPO / "build" / "test-artifacts"


class FakeOrthanc:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.routes: dict[str, Callable[..., None]] = {}
        self.scripts: list[str] = []
        self.logs: list[str] = []

    def GetConfiguration(self) -> str:  # noqa: N802 - the orthanc module's names
        return json.dumps(self.config)

    def RegisterRestCallback(  # noqa: N802
        self, regex: str, callback: Callable[..., None]
    ) -> None:
        self.routes[regex] = callback

    def ExtendOrthancExplorer(self, script: str) -> None:  # noqa: N802
        self.scripts.append(script)

    def LogWarning(self, text: str) -> None:  # noqa: N802
        self.logs.append(text)


class FakeOutput:
    def __init__(self) -> None:
        self.answer: tuple[int, bytes] | None = None

    def AnswerBuffer(self, body: bytes, mime: str) -> None:  # noqa: N802
        self.answer = (200, body)

    def SendHttpStatus(self, status: int, body: bytes, size: int) -> None:  # noqa: N802
        self.answer = (status, body)

    def SendMethodNotAllowed(self, allowed: str) -> None:  # noqa: N802
        self.answer = (405, b"")


def _call(fake: FakeOrthanc, route: str, uid: str, **request) -> tuple[int, dict]:
    out = FakeOutput()
    fake.routes[route](out, f"/radnode/studies/{uid}/x", groups=[uid], **request)
    assert out.answer is not None
    status, body = out.answer
    return status, json.loads(body) if body else {}


def test_plugin_module_forwards_with_its_token(analysed) -> None:
    node, uid = analysed.node, analysed.study_uid
    with serve(create_app(node)) as base:
        fake = FakeOrthanc({"Radnode": {"Url": base, "FeedbackToken": RADIOLOGIST}})
        register(fake)
        assert set(fake.routes) == {RESULT_ROUTE, FEEDBACK_ROUTE}
        assert "pagebeforeshow" in fake.scripts[0]
        status, result = _call(fake, RESULT_ROUTE, uid, method="GET")
        assert status == 200 and result["status"] == "done" and result["feedback"] == []
        assert _call(fake, RESULT_ROUTE, "1..2", method="GET")[0] == 400
        assert _call(fake, FEEDBACK_ROUTE, uid, method="GET")[0] == 405
        body = json.dumps({"decision": "confirm"}).encode()
        status, record = _call(fake, FEEDBACK_ROUTE, uid, method="POST", body=body)
        assert status == 200 and record["created"] is True and record["user"] == "Doe^Jane"
        # a token without the radiologist role: radnode's 403 comes back, nothing recorded
        fake_viewer = FakeOrthanc({"Radnode": {"Url": base, "FeedbackToken": VIEWER}})
        register(fake_viewer)
        relabel = json.dumps({"decision": "relabel", "label": "no lesion"}).encode()
        assert _call(fake_viewer, FEEDBACK_ROUTE, uid, method="POST", body=relabel)[0] == 403
    with node.index.engine.connect() as conn:
        assert len(list(conn.execute(feedback.select()))) == 1
    # radnode down: a 502 with a reason, not an exception in Orthanc's thread
    status, answer = _call(fake, RESULT_ROUTE, uid, method="GET")
    assert status == 502 and "unreachable" in answer["detail"]


def test_orthanc_explorer_study_page_shows_result_and_confirms(
    tmp_path: Path,
    shipped_models,
) -> None:
    from selenium.webdriver.common.by import By

    orthanc = OrthancPacs(
        tmp_path / "orthanc", python_script=REPO / "viewer_plugin" / "explorer_plugin.py"
    )
    node = make_node(tmp_path / "data", auth=True, pacs_peers=[orthanc.peer()])
    try:
        with serve(create_app(node)) as base:
            orthanc.extra = {"Radnode": {"Url": base, "FeedbackToken": RADIOLOGIST}}
            orthanc.start()
            spec = StudySpec(region="chest", slices=12, nodules=1, seed=5, rows=128, columns=128)
            uid = add_study(node, spec, tmp_path / "in").study_instance_uid
            run_all(node, AnalysisPipeline(node, shipped_models))
            sender = OutboxSender(node)
            while sender.run_once():
                pass
            auth = httpx.BasicAuth(*orthanc.credentials)
            [hit] = httpx.post(
                f"{orthanc.rest}/tools/lookup", content=uid, auth=auth, timeout=30
            ).json()
            basic = base64.b64encode(":".join(orthanc.credentials).encode()).decode()
            with chromium(tmp_path / "profile") as driver:
                driver.execute_cdp_cmd("Network.enable", {})
                driver.execute_cdp_cmd(
                    "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {basic}"}}
                )
                driver.get(f"{orthanc.rest}/app/explorer.html#study?uuid={hit['ID']}")
                score = wait(driver, lambda d: d.find_element(By.ID, "radnode-score").text)
                result = httpx.get(
                    f"{base}/api/studies/{uid}/result",
                    headers={"Authorization": f"Bearer {RADIOLOGIST}"},
                ).json()
                assert score == f"{result['score']:.3f}"
                assert driver.find_element(By.ID, "radnode-label").text == result["label"]
                driver.find_element(By.ID, "radnode-confirm").click()
                message = wait(
                    driver,
                    lambda d: d.find_element(By.CSS_SELECTOR, "#radnode-message[data-done='true']"),
                )
                assert "Recorded: confirm" in message.text
                sr_uid = message.get_attribute("data-sr-uid")
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(ARTIFACTS / "orthanc-explorer-study.png"))
        with node.index.engine.connect() as conn:
            [row] = list(conn.execute(feedback.select()))
        assert row.decision == "confirm" and row.user == "Doe^Jane"
        assert row.sr_sop_instance_uid == sr_uid
    finally:
        orthanc.stop()
        node.close()
    assert "radnode explorer extension" in (tmp_path / "orthanc" / "orthanc.log").read_text()
