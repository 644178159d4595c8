"""The PACS services of one process: a result queued for delivery wakes the outbox
sender at once, long before its next poll, and reaches a real Orthanc; a study the
changes follower queues wakes the process's worker the same way."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian

from ai_node.synth import StudySpec, write_study
from ai_node.worker import Worker
from pacs_link import PacsServices
from pacs_link.changes import SEQ_KEY
from pacs_link.outbox import all_states, get_state
from radnode.assembly import build_node
from radnode_core.jobs import Job
from radnode_core.node import ResultSummary
from radnode_core.settings import Settings
from tests.support.dicom_bytes import dataset_bytes
from tests.support.orthanc_peer import OrthancPacs
from tests.support.orthanc_queries import instance_count
from tests.support.tools import dcmtk_env, storescu
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


def test_a_study_the_follower_queues_wakes_the_worker_before_its_next_poll(
    tmp_path: Path,
) -> None:
    study, files = write_study(
        StudySpec(region="chest", slices=4, seed=73, rows=64, columns=64), tmp_path / "in"
    )
    uid = study.study_instance_uid
    with OrthancPacs(tmp_path / "orthanc", extra={"StableAge": 30}, env=dcmtk_env()) as orthanc:
        peer = orthanc.peer(follow_changes=True, quiet_s=0.3)
        node = build_node(Settings(data_dir=tmp_path / "data", fsync=False, pacs_peers=[peer]))
        processed: list[Job] = []
        worker = Worker(node.queue, processed.append, node.metrics, poll_s=60)
        services = PacsServices(node, on_queued=worker.wake)
        worker.start()
        services.start()
        try:
            # the follower has read the feed's end; the worker's first look found nothing
            wait_for(
                lambda: get_state(node.index, peer.name, SEQ_KEY) is not None,
                timeout=30,
                what="the feed's end read",
            )
            sent = storescu(orthanc.dicom_port, files, called="ORTHANC")
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: processed, timeout=20, what="the job processed", interval=0.05)
            assert [(j.study_uid, j.version) for j in processed] == [(uid, len(files))]
        finally:
            services.stop()
            worker.stop()
            node.close()
