"""The amended SR reaches the PACS: relabel through the API, the outbox delivers it to a real
Orthanc by STOW-RS, and QIDO-RS / WADO-RS against Orthanc find it VERIFIED with the AI SR
as its predecessor."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from ai_node.pipeline import AnalysisPipeline
from ai_node.synth import StudySpec
from dicomweb.app import create_app
from pacs_link.sender import OutboxSender
from radnode.assembly import build_node
from radnode_core.settings import Settings
from tests.support.analysis import add_study, run_all
from tests.support.orthanc_peer import OrthancPacs
from tests.support.orthanc_queries import qido, sr_instances
from tests.support.viewer import RADIOLOGIST
from tests.support.wait import wait_for


def test_relabel_sr_is_delivered_to_orthanc(tmp_path: Path, shipped_models) -> None:
    with OrthancPacs(tmp_path / "orthanc") as orthanc:
        node = build_node(
            Settings(
                data_dir=tmp_path / "data",
                fsync=False,
                pacs_peers=[orthanc.peer()],
                auth_enabled=True,
                api_tokens={RADIOLOGIST: "radiologist"},
                radiologist_names={RADIOLOGIST: "Doe^Jane"},
            )
        )
        try:
            spec = StudySpec(region="chest", slices=12, nodules=1, seed=9, rows=128, columns=128)
            uid = add_study(node, spec, tmp_path / "in").study_instance_uid
            run_all(node, AnalysisPipeline(node, shipped_models))
            with TestClient(create_app(node)) as client:
                auth = {"Authorization": f"Bearer {RADIOLOGIST}"}
                result = client.get(f"/api/studies/{uid}/result", headers=auth).json()
                label = "no lesion" if result["label"] == "lesion" else "lesion"
                answer = client.post(
                    f"/api/studies/{uid}/feedback",
                    json={"decision": "relabel", "label": label},
                    headers=auth,
                )
                assert answer.status_code == 201, answer.text
                amended = answer.json()["sr_sop_instance_uid"]
            sender = OutboxSender(node)
            wait_for(
                lambda: sender.run_once() == 0 and len(sr_instances(orthanc, uid)) == 2,
                what="both SRs in Orthanc",
            )
            [hit] = qido(orthanc, f"/studies/{uid}/instances?SOPInstanceUID={amended}")
            series_uid = hit["0020000E"]["Value"][0]
            [meta] = qido(
                orthanc, f"/studies/{uid}/series/{series_uid}/instances/{amended}/metadata"
            )
        finally:
            node.close()
    assert meta["0040A493"]["Value"] == ["VERIFIED"]
    [pre_study] = meta["0040A360"]["Value"]
    pre_sop = pre_study["00081115"]["Value"][0]["00081199"]["Value"][0]["00081155"]["Value"][0]
    assert pre_sop == result["sr_sop_instance_uid"]
    observer = meta["0040A073"]["Value"][0]
    assert observer["0040A075"]["Value"][0]["Alphabetic"] == "Doe^Jane"
