"""Routing rules: which peers get which result, delivered through the outbox to real peers
(dcmtk storescp as a DICOM AE, Orthanc as a DICOMweb endpoint), audited; and the AI
pipeline and the feedback service routing their SRs by the result's label."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ai_node.pipeline import AnalysisPipeline, encode
from ai_node.results import ResultStore
from ai_node.synth import StudySpec, write_study
from ai_node.worker import Worker
from pacs_link.outbox import Outbox, queue_study_results
from pacs_link.sender import OutboxSender
from radnode.assembly import build_node
from radnode_core.node import Node, ResultSummary
from radnode_core.settings import PacsPeer, RoutingRule, Settings
from tests.support.dicom_bytes import dataset_bytes
from tests.support.dicomweb_peer import OrthancDicomWeb
from tests.support.processes import free_port, stop_process, wait_port
from tests.support.tools import dcmtk_env, require_tool
from viewer_plugin.feedback import FeedbackService, Reviewer

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
MODELS = ("finding/1.0.0", "region/1.0.0")


class StoreScp:
    """dcmtk storescp writing what it receives into a folder."""

    def __init__(self, work: Path, aet: str) -> None:
        self.aet = aet
        self.port = free_port()
        self.out = work / aet
        self.out.mkdir(parents=True)
        self.proc = subprocess.Popen(
            [require_tool("storescp"), "-aet", aet, "-od", str(self.out), str(self.port)],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)

    def received(self) -> set[str]:
        return {
            str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in self.out.iterdir()
            if p.is_file()
        }

    def peer(self, name: str) -> PacsPeer:
        return PacsPeer(
            name=name,
            ae_title=self.aet,
            host="127.0.0.1",
            port=self.port,
            delivery="cstore",
            forward_originals=False,
        )

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Sent:
    study_uid: str
    originals: set[str]
    sr_uid: str


def _fake_sr(study_uid: str) -> Dataset:
    """A small SR instance of the study (the routing looks at the summary, not the SR)."""
    ds = Dataset()
    ds.SOPClassUID = COMPREHENSIVE_3D_SR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "ROUTE"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _study(node: Node, work: Path, seed: int) -> Sent:
    study, files = write_study(
        StudySpec(region="chest", slices=3, seed=seed, rows=32, columns=32), work / f"study{seed}"
    )
    for f in files:
        node.ingestor.ingest(dataset_bytes(f), ExplicitVRLittleEndian, source="test")
    sr = _fake_sr(study.study_instance_uid)
    node.ingestor.ingest(encode(sr), ExplicitVRLittleEndian, source="ai", analyze=False)
    originals = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    return Sent(study.study_instance_uid, originals, str(sr.SOPInstanceUID))


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[StoreScp, OrthancDicomWeb]]:
    a = StoreScp(tmp_path, "PEERA")
    orthanc = OrthancDicomWeb(tmp_path / "orthanc").start()
    yield a, orthanc
    a.stop()
    orthanc.stop()


def _in_orthanc(orthanc: OrthancDicomWeb, study_uid: str) -> set[str]:
    response = httpx.get(f"{orthanc.url}/studies/{study_uid}/instances", timeout=30)
    if response.status_code == 404 or not response.content:
        return set()
    return {item["00080018"]["Value"][0] for item in response.json()}


RULES = [
    # A (a DICOM AE) gets the SRs of the 1.x finding model scoring 0.5 or more ...
    RoutingRule(peers=["a"], model="finding/1.", min_score=0.5),
    # ... B (DICOMweb) the negative results, with the originals ...
    RoutingRule(peers=["b"], labels=["no lesion"], originals=True),
    # ... and both any MR result.
    RoutingRule(peers=["a", "b"], modalities=["MR"]),
]


def test_rules_route_each_result_to_its_peers(tmp_path: Path, peers) -> None:
    a, orthanc = peers
    b = PacsPeer(
        name="b",
        dicomweb_url=orthanc.url,
        ae_title="ORTHANC",
        delivery="stow",
        forward_originals=False,
    )
    node = build_node(
        Settings(
            data_dir=tmp_path / "data",
            fsync=False,
            pacs_peers=[a.peer("a"), b],
            routing_rules=RULES,
        )
    )
    try:
        cases = {
            "high score": ResultSummary("lesion", 0.9, MODELS, "CT"),
            "negative": ResultSummary("no lesion", 0.1, MODELS, "CT"),
            "other model": ResultSummary("lesion", 0.9, ("finding/2.0.0",), "CT"),
            "mr": ResultSummary("lesion", 0.2, MODELS, "MR"),
            "low score": ResultSummary("lesion", 0.3, MODELS, "CT"),
        }
        sent = {name: _study(node, tmp_path, seed) for seed, name in enumerate(cases, start=80)}
        for name, summary in cases.items():
            queue_study_results(node, sent[name].study_uid, sent[name].sr_uid, summary)
        # A study that could not be analysed: no SR, no score; no rule's condition holds.
        failed = _study(node, tmp_path, 90)
        assert queue_study_results(node, failed.study_uid, None, ResultSummary()) == 0
        sender = OutboxSender(node)
        while sender.run_once():
            pass
        at_a = a.received()
        in_b = {name: _in_orthanc(orthanc, s.study_uid) for name, s in sent.items()}

        assert sent["high score"].sr_uid in at_a and in_b["high score"] == set()
        assert in_b["negative"] == {sent["negative"].sr_uid, *sent["negative"].originals}
        assert not at_a & {sent["negative"].sr_uid, *sent["negative"].originals}
        assert sent["other model"].sr_uid not in at_a and in_b["other model"] == set()
        assert sent["mr"].sr_uid in at_a and in_b["mr"] == {sent["mr"].sr_uid}
        assert sent["low score"].sr_uid not in at_a and in_b["low score"] == set()
        assert at_a == {sent["high score"].sr_uid, sent["mr"].sr_uid}  # never the originals
        assert Outbox(node.index).counts() == {("a", "delivered"): 2, ("b", "delivered"): 5}

        # Each delivered batch is audited with its destination.
        audit = "\n".join(p.read_text() for p in (tmp_path / "data" / "audit").glob("*.log"))
        lines = [line for line in audit.splitlines() if 'csd-code="110104"' in line]
        assert sum('UserID="PEERA"' in line for line in lines) == 2
        assert sum('UserID="b"' in line and "stow to b: 4 delivered" in line for line in lines) == 1
    finally:
        node.close()


def test_without_rules_every_peer_gets_every_result(tmp_path: Path, peers) -> None:
    a, orthanc = peers
    b = PacsPeer(name="b", dicomweb_url=orthanc.url, delivery="stow", forward_originals=True)
    node = build_node(
        Settings(data_dir=tmp_path / "data", fsync=False, pacs_peers=[a.peer("a"), b])
    )
    try:
        study = _study(node, tmp_path, 95)
        queue_study_results(
            node, study.study_uid, study.sr_uid, ResultSummary("no lesion", 0.0, MODELS, "CT")
        )
        while OutboxSender(node).run_once():
            pass
        assert a.received() == {study.sr_uid}  # forward_originals false for A
        assert _in_orthanc(orthanc, study.study_uid) == {study.sr_uid, *study.originals}
    finally:
        node.close()


def test_rules_must_name_configured_peers() -> None:
    with pytest.raises(ValueError, match="unknown pacs_peers: nope"):
        Settings(pacs_peers=[PacsPeer(name="a")], routing_rules=[RoutingRule(peers=["nope"])])


def test_pipeline_and_feedback_route_their_srs_by_label(tmp_path: Path) -> None:
    """The AI SR goes to the peer of the result's label; a radiologist's relabel sends the
    amended SR to the other one."""
    positive, negative = StoreScp(tmp_path, "POSITIVE"), StoreScp(tmp_path, "NEGATIVE")
    rules = [
        RoutingRule(peers=["pos"], labels=["lesion"]),
        RoutingRule(peers=["neg"], labels=["no lesion"]),
    ]
    node = build_node(
        Settings(
            data_dir=tmp_path / "data",
            fsync=False,
            pacs_peers=[positive.peer("pos"), negative.peer("neg")],
            routing_rules=rules,
        )
    )
    try:
        study, files = write_study(
            StudySpec(
                region="chest",
                slices=24,
                nodules=1,
                seed=5,
                rows=128,
                columns=128,
                pixel_spacing_mm=2.8,
            ),
            tmp_path / "chest",
        )
        for f in files:
            node.ingestor.ingest(dataset_bytes(f), ExplicitVRLittleEndian, source="test")
        node.queue.enqueue_if_due(study.study_instance_uid, "manual")
        worker = Worker(node.queue, AnalysisPipeline(node), node.metrics, poll_s=0.01)
        while worker.run_once():
            pass
        result = ResultStore(node.index).study_result(study.study_instance_uid)
        assert result is not None and result["status"] == "done", result
        assert result["details"]["model_ids"] == ["finding/1.0.0", "region/1.0.0"]
        assert result["details"]["modality"] == "CT"
        while OutboxSender(node).run_once():
            pass
        first, other = (positive, negative) if result["label"] == "lesion" else (negative, positive)
        assert first.received() == {result["sr_sop_instance_uid"]}
        assert other.received() == set()

        new_label = "no lesion" if result["label"] == "lesion" else "lesion"
        record, _ = FeedbackService(node).record(
            study.study_instance_uid, "relabel", Reviewer("dr", "Doe^Jane"), label=new_label
        )
        while OutboxSender(node).run_once():
            pass
        assert other.received() == {record["sr_sop_instance_uid"]}
        assert first.received() == {result["sr_sop_instance_uid"]}
    finally:
        node.close()
        positive.stop()
        negative.stop()
