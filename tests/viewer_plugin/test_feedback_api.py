"""POST /api/studies/{uid}/feedback: roles, the index row, the verified SR, the edge cases."""

from __future__ import annotations

import logging

import pydicom
import pytest
from fastapi.testclient import TestClient

from ai_node.results import ResultStore
from ai_node.tables import feedback
from dicomweb.app import create_app
from tests.support.analysis import sr_rows, study_result
from tests.support.tools import dciodvfy
from tests.support.viewer import ADMIN, RADIOLOGIST, VIEWER


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _feedback_rows(node) -> list:
    with node.index.engine.connect() as conn:
        return list(conn.execute(feedback.select()))


def test_only_radiologists_judge_and_others_record_nothing(analysed) -> None:
    node, uid = analysed.node, analysed.study_uid
    with TestClient(create_app(node)) as client:
        body = {"decision": "confirm"}
        assert client.post(f"/api/studies/{uid}/feedback", json=body).status_code == 401
        for token in (VIEWER, ADMIN):
            r = client.post(f"/api/studies/{uid}/feedback", json=body, headers=_auth(token))
            assert r.status_code == 403, r.text
        assert client.get("/api/whoami", headers=_auth(VIEWER)).json()["may_give_feedback"] is False
    assert _feedback_rows(node) == []
    assert len(sr_rows(node, uid)) == 1


def test_relabel_records_row_audit_and_amended_sr(analysed, caplog, tmp_path) -> None:
    node, uid = analysed.node, analysed.study_uid
    result = ResultStore(node.index).study_result(uid)
    assert result and result["status"] == "done"
    new_label = "no lesion" if result["label"] == "lesion" else "lesion"
    with TestClient(create_app(node)) as client:
        me = client.get("/api/whoami", headers=_auth(RADIOLOGIST)).json()
        assert me["observer_name"] == "Doe^Jane" and me["may_give_feedback"] is True
        with caplog.at_level(logging.INFO, logger="radnode_core.audit"):
            r = client.post(
                f"/api/studies/{uid}/feedback",
                json={
                    "decision": "relabel",
                    "label": new_label,
                    "comment": "calcified granuloma",
                    "sr_sop_instance_uid": result["sr_sop_instance_uid"],
                },
                headers=_auth(RADIOLOGIST),
            )
        assert r.status_code == 201, r.text
        record = r.json()
        assert record["created"] is True and record["label"] == new_label
        assert record["ai_label"] == result["label"] and record["user"] == "Doe^Jane"
        assert record["model_version"] == result["model_version"]
        assert record["predecessor_sop_instance_uid"] == result["sr_sop_instance_uid"]
        # the double click: same judgement again -> the same record, nothing new
        again = client.post(
            f"/api/studies/{uid}/feedback",
            json={"decision": "relabel", "label": new_label, "comment": "calcified granuloma"},
            headers=_auth(RADIOLOGIST),
        )
        assert again.status_code == 200 and again.json()["id"] == record["id"]
        listed = client.get(f"/api/studies/{uid}/feedback", headers=_auth(VIEWER)).json()
        assert [f["id"] for f in listed["items"]] == [record["id"]]
        work = client.get("/api/worklist?reviewed=true", headers=_auth(VIEWER)).json()
        assert work["total"] == 1 and work["items"][0]["review"]["label"] == new_label
        assert (
            client.get("/api/worklist?reviewed=false", headers=_auth(VIEWER)).json()["total"] == 0
        )

    [audit] = [rec for rec in caplog.records if rec.name == "radnode_core.audit"]
    assert audit.user == "Doe^Jane" and audit.decision == "relabel" and audit.study_uid == uid
    [row] = _feedback_rows(node)
    assert row.comment == "calcified granuloma" and row.created_at is not None

    srs = {r["sop_instance_uid"]: r for r in sr_rows(node, uid)}
    assert set(srs) == {result["sr_sop_instance_uid"], record["sr_sop_instance_uid"]}
    path = node.store.path_of(srs[record["sr_sop_instance_uid"]]["path"])
    report = dciodvfy(path)
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    ds = pydicom.dcmread(path)
    assert ds.VerificationFlag == "VERIFIED"
    assert ds.VerifyingObserverSequence[0].VerifyingObserverName == "Doe^Jane"
    assert ds.VerifyingObserverSequence[0].VerifyingOrganization == "General Hospital"
    pre = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pre.ReferencedSOPInstanceUID == result["sr_sop_instance_uid"]
    # the SR does not make the study due for analysis again
    assert node.queue.enqueue_if_due(uid, "manual") is None


def test_second_judgement_supersedes_the_first(analysed) -> None:
    node, uid = analysed.node, analysed.study_uid
    ai_label = study_result(node, uid)["label"]
    other = "no lesion" if ai_label == "lesion" else "lesion"
    with TestClient(create_app(node)) as client:
        first = client.post(
            f"/api/studies/{uid}/feedback", json={"decision": "confirm"}, headers=_auth(RADIOLOGIST)
        ).json()
        second = client.post(
            f"/api/studies/{uid}/feedback",
            json={"decision": "relabel", "label": other},
            headers=_auth(RADIOLOGIST),
        )
        assert second.status_code == 201
        assert second.json()["predecessor_sop_instance_uid"] == first["sr_sop_instance_uid"]
        assert first["label"] == ai_label
        bad = client.post(
            f"/api/studies/{uid}/feedback",
            json={"decision": "relabel", "label": ai_label},
            headers=_auth(RADIOLOGIST),
        )
        assert bad.status_code == 422
        stale = client.post(
            f"/api/studies/{uid}/feedback",
            json={"decision": "confirm", "sr_sop_instance_uid": "1.2.3.4"},
            headers=_auth(RADIOLOGIST),
        )
        assert stale.status_code == 409
        work = client.get("/api/worklist", headers=_auth(RADIOLOGIST)).json()
        assert work["items"][0]["review"]["decision"] == "relabel"
    assert len(_feedback_rows(node)) == 2
    assert len(sr_rows(node, uid)) == 3


@pytest.mark.parametrize("state", ["unknown", "pending"])
def test_no_result_yet_is_a_conflict_and_records_nothing(analysed, state) -> None:
    node = analysed.node
    uid = "1.2.826.0.1.3680043.8.498.1"
    if state == "pending":
        from radnode_core.index import InstanceRecord

        node.index.add_instance(
            InstanceRecord(
                sop_instance_uid=f"{uid}.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                series_uid=f"{uid}.2",
                study_uid=uid,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path="x.dcm",
                size=1,
                received_at=0.0,
            )
        )
    with TestClient(create_app(node)) as client:
        r = client.post(
            f"/api/studies/{uid}/feedback", json={"decision": "confirm"}, headers=_auth(RADIOLOGIST)
        )
    assert r.status_code == (404 if state == "unknown" else 409), r.text
    assert _feedback_rows(node) == []
