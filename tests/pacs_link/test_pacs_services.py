"""The PACS services of one process: a result queued for delivery wakes the outbox
sender at once, long before its next poll, and reaches a real Orthanc."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian

from ai_node.synth import StudySpec, write_study
from pacs_link import PacsServices
from pacs_link.outbox import all_states
from radnode.assembly import build_node
from radnode_core.node import ResultSummary
from radnode_core.settings import Settings
from tests.support.dicom_bytes import dataset_bytes
from tests.support.orthanc_peer import OrthancPacs
from tests.support.orthanc_queries import instance_count
from tests.support.wait import wait_for


def test_a_queued_result_wakes_the_sender_before_its_next_poll(tmp_path: Path) -> None:
    study, files = write_study(
        StudySpec(region="chest", slices=3, seed=72, rows=64, columns=64), tmp_path / "in"
    )
    uid = study.study_instance_uid
    with OrthancPacs(tmp_path / "orthanc") as orthanc:
        settings = Settings(
            data_dir=tmp_path / "data", fsync=False, outbox_poll_s=60, pacs_peers=[orthanc.peer()]
        )
        node = build_node(settings)
        services = PacsServices(node)
        services.start()
        try:
            for f in files:
                node.ingestor.ingest(dataset_bytes(f), ExplicitVRLittleEndian, source="test")
            # the sender has made its first round (its probe) and now waits up to 60 s
            wait_for(lambda: all_states(node.index, "status"), timeout=30, what="first round")
            assert node.deliver is not None
            assert node.deliver(uid, None, ResultSummary()) == len(files)
            wait_for(lambda: instance_count(orthanc, uid) == len(files), timeout=10)
        finally:
            services.stop()
            node.close()
