"""End to end with a real Orthanc (started from deploy/orthanc/orthanc.json, authentication
on): path 1 (modality -> radnode -> Orthanc), path 2 (modality -> Orthanc -> radnode ->
SR back in Orthanc) with a radnode restart between two studies."""

from __future__ import annotations

from typing import Any

import httpx

from ai_node.synth import StudySpec, write_study
from pacs_link import client
from pacs_link.outbox import Outbox
from radnode.assembly import build_node
from radnode_core.settings import Settings
from tests.support.orthanc_peer import OrthancPacs
from tests.support.orthanc_queries import instance_count, qido, sr_instances, sr_probability
from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import storescu
from tests.support.wait import wait_for

SPEC: dict[str, Any] = {
    "region": "chest", "slices": 20, "rows": 256, "columns": 256, "pixel_spacing_mm": 1.4
}


def _result(node: RadnodeProcess, study_uid: str) -> dict:
    url = f"http://127.0.0.1:{node.http_port}/api/studies/{study_uid}/result"

    def finished() -> dict | None:
        response = httpx.get(url, timeout=10)
        body = response.json() if response.status_code == 200 else {}
        return body if body.get("status") in ("done", "out_of_scope", "failed") else None

    return wait_for(finished, what=f"result of {study_uid}")


def test_path1_radnode_forwards_originals_and_sr_to_orthanc(tmp_path) -> None:
    study, files = write_study(StudySpec(**SPEC, nodules=1, seed=51), tmp_path / "in")
    uid = study.study_instance_uid
    with OrthancPacs(tmp_path / "orthanc") as orthanc:
        node = RadnodeProcess(
            tmp_path / "data", "serve", env={"RADNODE_PACS_PEERS": orthanc.peer_json()}
        ).start()
        try:
            sent = storescu(node.dicom_port, files)
            assert sent.returncode == 0, sent.stderr
            result = _result(node, uid)
            assert result["status"] == "done", result
            [sr] = wait_for(lambda: sr_instances(orthanc, uid), what="SR in Orthanc")
            assert sr["00080018"]["Value"][0] == result["sr_sop_instance_uid"]
            assert instance_count(orthanc, uid) == len(files) + 1
            outbox = httpx.get(
                f"http://127.0.0.1:{node.http_port}/api/outbox?study_uid={uid}", timeout=10
            ).json()
            assert outbox["counts"]["orthanc"] == {"delivered": len(files) + 1}, outbox
            ready = httpx.get(f"http://127.0.0.1:{node.http_port}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
            metrics = httpx.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10).text
            delivered = f'radnode_outbox_items{{peer="orthanc",state="delivered"}} {len(files) + 1}'
            assert delivered in metrics
        finally:
            assert node.stop() == 0
        web = client.dicomweb(orthanc.peer())
        ds = web.retrieve_instance(uid, sr["0020000E"]["Value"][0], sr["00080018"]["Value"][0])
        score, content = sr_probability(ds)
        assert round(score, 4) == round(result["score"], 4)
        for version in result["model_version"].split(","):
            assert version.split(":")[1] in content
        # SR in its own series, the originals' series untouched
        series = qido(orthanc, f"/studies/{uid}/series")
        assert sorted(s["00080060"]["Value"][0] for s in series) == ["CT", "SR"]


def test_path2_orthanc_study_is_fetched_analysed_and_sr_stored_back_across_a_restart(
    tmp_path,
) -> None:
    first, first_files = write_study(StudySpec(**SPEC, nodules=1, seed=52), tmp_path / "a")
    second, second_files = write_study(StudySpec(**SPEC, seed=53), tmp_path / "b")
    with OrthancPacs(tmp_path / "orthanc") as orthanc:
        peers = orthanc.peer_json(follow_changes=True)
        env = {"RADNODE_PACS_PEERS": peers}
        node = RadnodeProcess(tmp_path / "data", "serve", env=env).start()
        try:
            wait_for(
                lambda: httpx.get(f"http://127.0.0.1:{node.http_port}/readyz").status_code == 200,
                what="radnode ready",
            )
            sent = storescu(orthanc.dicom_port, first_files, called="ORTHANC")
            assert sent.returncode == 0, sent.stderr
            result = _result(node, first.study_instance_uid)
            assert result["status"] == "done", result
            wait_for(lambda: sr_instances(orthanc, first.study_instance_uid), what="first SR")
        finally:
            assert node.stop() == 0
        # radnode is down while the second study arrives at the PACS
        sent = storescu(orthanc.dicom_port, second_files, called="ORTHANC")
        assert sent.returncode == 0, sent.stderr
        node = RadnodeProcess(tmp_path / "data", "serve", env=env).start()
        try:
            result = _result(node, second.study_instance_uid)
            assert result["status"] == "done", result
            wait_for(lambda: sr_instances(orthanc, second.study_instance_uid), what="second SR")
            jobs = httpx.get(f"http://127.0.0.1:{node.http_port}/api/results", timeout=10).json()
        finally:
            assert node.stop() == 0
    # each study analysed once, one SR each, originals not sent back to the PACS
    assert jobs["total"] == 2, jobs
    local = build_node(Settings(data_dir=tmp_path / "data"))
    try:
        for study in (first, second):
            assert len(local.queue.jobs_for(study.study_instance_uid)) == 1
            rows = Outbox(local.index).list(study_uid=study.study_instance_uid)
            kinds = [r["kind"] for r in rows]
            assert kinds == ["sr"], kinds
    finally:
        local.close(clean=False)
