"""Other ways in and out against a real Orthanc: C-STORE delivery instead of STOW-RS, and
Orthanc's Python plugin (viewer_plugin/orthanc_plugin.py) telling radnode of a stable study."""

from __future__ import annotations

import httpx
from pydicom.uid import ExplicitVRLittleEndian

from ai_node.synth import StudySpec, write_study
from pacs_link.outbox import Outbox, queue_study_results
from pacs_link.sender import OutboxSender
from radnode.assembly import build_node
from radnode_core.settings import Settings
from tests.support.dicom_bytes import dataset_bytes
from tests.support.orthanc_peer import OrthancPacs
from tests.support.orthanc_queries import instance_count, sr_instances
from tests.support.radnode_process import REPO, RadnodeProcess
from tests.support.tools import storescu
from tests.support.wait import wait_for


def test_cstore_delivery_through_the_outbox(tmp_path) -> None:
    study, files = write_study(
        StudySpec(region="chest", slices=4, seed=71, rows=64, columns=64), tmp_path / "in"
    )
    uid = study.study_instance_uid
    with OrthancPacs(tmp_path / "orthanc") as orthanc:
        peer = orthanc.peer(delivery="cstore")
        node = build_node(Settings(data_dir=tmp_path / "data", fsync=False, pacs_peers=[peer]))
        try:
            for f in files:
                node.ingestor.ingest(dataset_bytes(f), ExplicitVRLittleEndian, source="test")
            assert queue_study_results(node, uid, None) == len(files)
            assert OutboxSender(node).run_once() == len(files)
            assert instance_count(orthanc, uid) == len(files)
            assert Outbox(node.index).counts() == {("orthanc", "delivered"): len(files)}
        finally:
            node.close()


def test_orthanc_python_plugin_notifies_radnode_of_a_stable_study(tmp_path) -> None:
    study, files = write_study(
        StudySpec(region="chest", slices=12, seed=72, rows=128, columns=128, pixel_spacing_mm=2.8),
        tmp_path / "in",
    )
    uid = study.study_instance_uid
    node = RadnodeProcess(tmp_path / "data", "serve")
    radnode_url = f"http://127.0.0.1:{node.http_port}"
    orthanc = OrthancPacs(
        tmp_path / "orthanc",
        radnode_port=node.dicom_port,
        python_script=REPO / "viewer_plugin" / "orthanc_plugin.py",
        extra={"Radnode": {"Url": radnode_url, "Peer": "orthanc"}},
    )
    orthanc.start()
    try:
        node.env["RADNODE_PACS_PEERS"] = orthanc.peer_json(follow_changes=False)
        node.start()
        try:
            sent = storescu(orthanc.dicom_port, files, called="ORTHANC")
            assert sent.returncode == 0, sent.stderr
            [sr] = wait_for(lambda: sr_instances(orthanc, uid), what="SR in Orthanc")
            result = httpx.get(f"{radnode_url}/api/studies/{uid}/result", timeout=10).json()
            assert sr["00080018"]["Value"][0] == result["sr_sop_instance_uid"]
            rows = httpx.get(f"{radnode_url}/api/outbox?study_uid={uid}", timeout=10).json()
            assert [r["kind"] for r in rows["items"]] == ["sr"]  # originals stay in Orthanc
        finally:
            assert node.stop() == 0
    finally:
        orthanc.stop()
    assert "radnode notifier" in (tmp_path / "orthanc" / "orthanc.log").read_text()
