"""The PACS is down, or refuses radnode's credentials: results wait in the outbox (visible
in the API and /readyz), are delivered once it is back, exactly once; radnode never exits."""

from __future__ import annotations

import json

import httpx

from ai_node.synth import StudySpec, write_study
from tests.support.orthanc_peer import OrthancPacs
from tests.support.orthanc_queries import instance_count, sr_instances
from tests.support.processes import free_port
from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import storescu
from tests.support.wait import wait_for

FAST_RETRY = {"RADNODE_OUTBOX_BACKOFF_S": "0.2", "RADNODE_OUTBOX_BACKOFF_MAX_S": "1"}


def test_sr_produced_while_orthanc_is_down_is_delivered_once_when_it_is_back(tmp_path) -> None:
    study, files = write_study(
        StudySpec(region="chest", slices=12, seed=61, rows=128, columns=128, pixel_spacing_mm=2.8),
        tmp_path / "in",
    )
    uid = study.study_instance_uid
    orthanc = OrthancPacs(tmp_path / "orthanc").start()
    env = {"RADNODE_PACS_PEERS": orthanc.peer_json(), **FAST_RETRY}
    orthanc.stop()
    node = RadnodeProcess(tmp_path / "data", "serve", env=env).start()
    base = f"http://127.0.0.1:{node.http_port}"
    try:
        sent = storescu(node.dicom_port, files)
        assert sent.returncode == 0, sent.stderr

        def pending_sr() -> dict | None:
            body = httpx.get(f"{base}/api/outbox?study_uid={uid}", timeout=10).json()
            items = [i for i in body["items"] if i["kind"] == "sr"]
            return body if items and items[0]["attempts"] >= 2 else None

        outbox = wait_for(pending_sr, what="SR pending in the outbox")
        [sr_row] = [i for i in outbox["items"] if i["kind"] == "sr"]
        assert sr_row["state"] == "pending"
        assert "unreachable" in sr_row["last_error"], sr_row
        assert outbox["counts"]["orthanc"] == {"pending": len(files) + 1}
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 503 and "unreachable" in ready.text, ready.text

        orthanc.start()  # same ports, same storage
        wait_for(lambda: sr_instances(orthanc, uid), what="SR in Orthanc after its restart")
        counts = wait_for(
            lambda: (
                httpx.get(f"{base}/api/outbox", timeout=10).json()["counts"]["orthanc"]
                == {"delivered": len(files) + 1}
            ),
            what="all delivered",
        )
        assert counts
        assert len(sr_instances(orthanc, uid)) == 1
        assert instance_count(orthanc, uid) == len(files) + 1
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, what="ready again")
        assert node.proc is not None and node.proc.poll() is None
    finally:
        assert node.stop() == 0
        orthanc.stop()


def test_wrong_credentials_and_unreachable_pacs_are_reported_without_a_crash_loop(
    tmp_path,
) -> None:
    with OrthancPacs(tmp_path / "orthanc") as orthanc:
        wrong = json.loads(orthanc.peer_json(follow_changes=True))[0]
        wrong["password"] = "not-the-password"
        absent = {
            "name": "gone",
            "dicomweb_url": f"http://127.0.0.1:{free_port()}/dicom-web",
            "follow_changes": True,
        }
        env = {"RADNODE_PACS_PEERS": json.dumps([wrong, absent])}
        node = RadnodeProcess(tmp_path / "data", "serve", env=env).start()
        base = f"http://127.0.0.1:{node.http_port}"
        try:

            def both_reported() -> httpx.Response | None:
                response = httpx.get(f"{base}/readyz", timeout=10)
                peers = response.json()["pacs_peers"]
                checked = all(p["error"] != "not checked yet" for p in peers.values())
                return response if checked else None

            ready = wait_for(both_reported, what="peers checked")
            assert ready.status_code == 503
            problems = " ".join(ready.json()["problems"])
            assert "orthanc: PACS peer orthanc: authentication refused (HTTP 401)" in problems
            assert "gone: PACS peer gone: unreachable" in problems
            log = node.log()
            assert "authentication refused (HTTP 401)" in log
            assert "check username/password" in log
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
            assert node.proc is not None and node.proc.poll() is None
        finally:
            assert node.stop() == 0
