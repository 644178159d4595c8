"""The outbox table's guarantees (SQLite index, no PACS): queued once, claimed with a lease,
backoff doubling and capped, refused rows kept as failed, originals from the PACS not
forwarded back."""

from __future__ import annotations

import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from ai_node.synth import StudySpec, write_study
from pacs_link.outbox import CLAIM_LEASE_S, Outbox, originals_to_forward, queue_study_results
from radnode.assembly import build_node
from radnode_core.index import instances
from radnode_core.settings import PacsPeer, Settings
from tests.support.dicom_bytes import dataset_bytes


@pytest.fixture
def node(tmp_path):
    peer = PacsPeer(name="pacs", dicomweb_url="http://127.0.0.1:9/dicom-web")
    n = build_node(Settings(data_dir=tmp_path / "data", fsync=False, pacs_peers=[peer]))
    yield n
    n.close()


def test_an_instance_is_queued_once_per_peer(node) -> None:
    box = Outbox(node.index)
    assert box.enqueue("pacs", "1.2.3", [("1.2.3.1", "original"), ("1.2.3.2", "sr")]) == 2
    assert box.enqueue("pacs", "1.2.3", [("1.2.3.2", "sr")]) == 0
    assert box.enqueue("other", "1.2.3", [("1.2.3.2", "sr")]) == 1
    assert box.counts() == {("pacs", "pending"): 2, ("other", "pending"): 1}


def test_claim_leases_rows_in_order_and_backoff_doubles_up_to_the_cap(node) -> None:
    box = Outbox(node.index)
    box.enqueue("pacs", "1.2.3", [("1.2.3.1", "original"), ("1.2.3.2", "sr")])
    now = time.time()
    items = box.claim("pacs", now=now)
    assert [i.sop_instance_uid for i in items] == ["1.2.3.1", "1.2.3.2"]
    assert box.claim("pacs", now=now + 1) == []  # leased
    assert len(box.claim("pacs", now=now + CLAIM_LEASE_S + 1)) == 2  # the lease ran out
    delays = []
    for _ in range(5):
        [first, *_rest] = items = box.claim("pacs", now=time.time() + 10_000)
        delays.append(box.retry_later(items, "unreachable", backoff_s=1.0, max_s=8.0))
    assert delays == [4.0, 8.0, 8.0, 8.0, 8.0]  # attempts 3..7 after the two claims above
    [row, _] = box.list(state="pending")
    assert row["last_error"] == "unreachable" and row["attempts"] == 7


def test_refused_rows_are_failed_with_the_reason_delivered_rows_are_kept(node) -> None:
    box = Outbox(node.index)
    box.enqueue("pacs", "1.2.3", [("1.2.3.1", "original"), ("1.2.3.2", "sr")])
    bad, good = box.claim("pacs")
    box.reject([bad], "refused: FailureReason 0xA900")
    box.delivered([good.id])
    rows = {r["sop_instance_uid"]: r for r in box.list()}
    assert rows["1.2.3.1"]["state"] == "failed" and "0xA900" in rows["1.2.3.1"]["last_error"]
    assert rows["1.2.3.2"]["state"] == "delivered" and rows["1.2.3.2"]["delivered_at"]
    assert box.claim("pacs", now=time.time() + 10_000) == []


def test_originals_from_the_pacs_are_not_forwarded_back(node, tmp_path) -> None:
    spec = StudySpec(region="chest", slices=3, seed=5, rows=32, columns=32)
    study, files = write_study(spec, tmp_path / "in")
    for f in files:
        node.ingestor.ingest(dataset_bytes(f), ExplicitVRLittleEndian, source="test")
    uid = study.study_instance_uid
    assert len(originals_to_forward(node.index, uid, "ORTHANC")) == 3
    with node.index.transaction() as conn:
        conn.execute(instances.update().values(calling_aet="ORTHANC"))
    assert originals_to_forward(node.index, uid, "ORTHANC") == []
    assert queue_study_results(node, uid, "1.2.3.99") == 1  # only the SR
