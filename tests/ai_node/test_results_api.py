"""GET /api/studies/{uid}/result and the triage worklist GET /api/results."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from ai_node.results import ResultStore
from dicomweb.app import create_app
from radnode_core.index import InstanceRecord, utcnow


def _study(node, uid: str) -> None:
    node.index.add_instance(
        InstanceRecord(
            sop_instance_uid=f"{uid}.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            series_uid=f"{uid}.0",
            study_uid=uid,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=f"studies/{uid}.dcm",
            size=1,
            received_at=time.time(),
        )
    )


@pytest.fixture
def client(node):
    with TestClient(create_app(node)) as c:
        yield c


def test_status_follows_the_job_then_the_result(node, client) -> None:
    assert client.get("/api/studies/1.2.999/result").status_code == 404
    assert client.get("/api/studies/not..a..uid/result").status_code == 400
    _study(node, "1.2.3")
    assert client.get("/api/studies/1.2.3/result").json()["status"] == "pending"
    node.queue.enqueue_if_due("1.2.3", "released")
    assert client.get("/api/studies/1.2.3/result").json()["status"] == "pending"
    job = node.queue.claim("w")
    assert client.get("/api/studies/1.2.3/result").json()["status"] == "running"
    ResultStore(node.index).upsert(
        "1.2.3",
        job.version,
        job.id,
        status="done",
        score=0.75,
        label="lesion",
        model_version="finding:1,region:1",
        sr_sop_instance_uid="1.2.3.4",
        finished_at=utcnow(),
        details={"timings": {"total_s": 1.5}},
    )
    body = client.get("/api/studies/1.2.3/result").json()
    assert (
        body["status"] == "done" and body["score"] == 0.75 and body["timings"] == {"total_s": 1.5}
    )
    assert (
        body["sr_sop_instance_uid"] == "1.2.3.4" and body["model_version"] == "finding:1,region:1"
    )
    # new instances arrive: a new version is pending, the previous result stays visible
    _study(node, "1.2.3.9")
    node.index.add_instance(
        InstanceRecord(
            sop_instance_uid="1.2.3.77",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            series_uid="1.2.3.0",
            study_uid="1.2.3",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path="studies/x.dcm",
            size=1,
            received_at=time.time(),
        )
    )
    node.queue.enqueue_if_due("1.2.3", "quiet")
    body = client.get("/api/studies/1.2.3/result").json()
    assert body["status"] == "pending" and body["previous"]["score"] == 0.75


def test_parked_job_is_failed_with_its_error(node, client) -> None:
    _study(node, "1.2.5")
    node.queue.enqueue_if_due("1.2.5", "released")
    node.queue.max_attempts = 1
    job = node.queue.claim("w")
    node.queue.fail(job, "w", "RuntimeError: boom")
    body = client.get("/api/studies/1.2.5/result").json()
    assert body["status"] == "failed" and "boom" in body["error"]


def test_worklist_sorted_by_score_with_paging_and_filters(node, client) -> None:
    store = ResultStore(node.index)
    for i, (score, status, label) in enumerate(
        [
            (0.2, "done", "no lesion"),
            (0.9, "done", "lesion"),
            (None, "out_of_scope", "out of scope: head"),
            (0.6, "done", "lesion"),
            (None, "failed", None),
        ]
    ):
        uid = f"1.2.7.{i}"
        _study(node, uid)
        store.upsert(uid, 1, None, status=status, score=score, label=label, finished_at=utcnow())
    body = client.get("/api/results").json()
    assert body["total"] == 5
    assert [r["score"] for r in body["items"]][:3] == [0.9, 0.6, 0.2]
    page = client.get("/api/results", params={"limit": 2, "offset": 1}).json()
    assert [r["study_uid"] for r in page["items"]] == ["1.2.7.3", "1.2.7.0"]
    lesions = client.get("/api/results", params={"label": "lesion"}).json()
    assert {r["study_uid"] for r in lesions["items"]} == {"1.2.7.1", "1.2.7.3"}
    assert client.get("/api/results", params={"min_score": 0.5}).json()["total"] == 2
    assert client.get("/api/results", params={"status": "failed"}).json()["total"] == 1
    assert client.get("/api/results", params={"status": "bogus"}).status_code == 400
    assert client.get("/api/results", params={"limit": 0}).status_code == 400
    # a newer version of a study replaces its older row in the worklist
    store.upsert(
        "1.2.7.0", 2, None, status="done", score=0.95, label="lesion", finished_at=utcnow()
    )
    body = client.get("/api/results").json()
    assert body["total"] == 5 and body["items"][0]["study_uid"] == "1.2.7.0"
