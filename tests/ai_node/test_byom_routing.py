"""Routing studies to the models they are for: every applicable model has its own result
and SR, a model's failure or timeout is its own, a study no model is for is out of scope;
the per-model results API, the worklist's triage and feedback per model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ai_node.package import import_package
from ai_node.pipeline import AnalysisPipeline
from ai_node.registry import ModelRegistry, ModelSet
from ai_node.results import ResultStore
from ai_node.retrain.labels import final_labels
from ai_node.synth import StudySpec
from dicomweb.app import create_app
from radnode.assembly import build_node
from radnode_core.node import Node
from radnode_core.settings import Settings
from tests.support.analysis import add_study, ingest_files, run_all, sr_rows, study_result
from tests.support.model_packages import ct_card, cxr_card, radiograph, tiny_cxr, write_package
from tests.support.tools import dciodvfy
from viewer_plugin.feedback import FeedbackService, Reviewer


def small(region: str, slices: int, seed: int, nodules: int = 0) -> StudySpec:
    return StudySpec(
        region=region,
        slices=slices,
        nodules=nodules,
        seed=seed,
        rows=128,
        columns=128,
        pixel_spacing_mm=2.8,
    )


def stored_path(node: Node, sop_instance_uid: str) -> Path:
    row = node.index.find_instance(sop_instance_uid)
    assert row is not None, sop_instance_uid
    return node.store.path_of(str(row["path"]))


@pytest.fixture
def byom(byom_registry: ModelRegistry, proto_package: Path, tmp_path: Path) -> Iterator[Any]:
    """A node whose byom_registry has the shipped models, the prototype CT model and a small
    chest X-ray model, all active, and its analysis pipeline."""
    import_package(byom_registry, proto_package, activate=True)
    cxr = write_package(
        tmp_path / "cxr",
        tiny_cxr(),
        cxr_card(name="cxr-small", input={"size": [64, 64]}, timeout_s=60),
    )
    import_package(byom_registry, cxr, activate=True)
    node = build_node(
        Settings(data_dir=tmp_path / "data", fsync=False, models_dir=byom_registry.root)
    )
    try:
        yield node, AnalysisPipeline(node, ModelSet(byom_registry)), byom_registry
    finally:
        node.close()


def _by_model(node: Node, uid: str) -> dict[str, dict]:
    result = ResultStore(node.index).study_result(uid)
    assert result is not None
    return {r["model"]: r for r in result["results"]}


def _valid_sr(node: Node, sop_instance_uid: str) -> Any:
    """The stored SR, after dicom3tools' dciodvfy found no error in it."""
    path = stored_path(node, sop_instance_uid)
    report = dciodvfy(path)
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    return hd.sr.srread(path)


def _algorithm(sr: Any) -> tuple[str, str]:
    """The TID 4019 Algorithm Name and Version of the SR's measurement group."""
    found: dict[str, str] = {}

    def walk(items: Any) -> None:
        for item in items:
            name = (
                item.ConceptNameCodeSequence[0].CodeValue
                if "ConceptNameCodeSequence" in item
                else ""
            )
            if name in (codes.DCM.AlgorithmName.value, codes.DCM.AlgorithmVersion.value):
                found.setdefault(name, str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found[codes.DCM.AlgorithmName.value], found[codes.DCM.AlgorithmVersion.value]


def test_a_chest_ct_goes_to_every_ct_model_each_with_its_sr(byom) -> None:
    node, pipeline, _ = byom
    study = add_study(
        node,
        small("chest", 12, 61, nodules=1),
        node.settings.data_dir.parent / "in",
    )
    run_all(node, pipeline)
    results = _by_model(node, study.study_instance_uid)
    assert set(results) == {"finding", "proto-ct"}  # the X-ray model is not for a CT
    assert all(r["status"] == "done" for r in results.values()), results
    assert results["proto-ct"]["model_version"] == "proto-ct:1.0,region:1.0.0"
    assert results["proto-ct"]["label"] in ("nodule", "no nodule")
    assert len(sr_rows(node, study.study_instance_uid)) == 2
    proto_sr = _valid_sr(node, results["proto-ct"]["sr_sop_instance_uid"])
    assert _algorithm(proto_sr) == ("proto-ct", "1.0")
    [group] = hd.sr.MeasurementReport.from_sequence([proto_sr]).get_image_measurement_groups()
    assert group.finding_type == codes.SCT.Nodule
    finding_sr = _valid_sr(node, results["finding"]["sr_sop_instance_uid"])
    assert _algorithm(finding_sr) == ("radnode-finding", "1.0.0")

    with TestClient(create_app(node)) as client:
        listed = client.get(f"/api/studies/{study.study_instance_uid}/results").json()
        lead = client.get(f"/api/studies/{study.study_instance_uid}/result").json()
        worklist = client.get("/api/results").json()
    assert {i["model"] for i in listed["items"]} == {"finding", "proto-ct"}
    best = max(results.values(), key=lambda r: r["score"])
    assert lead["model"] == best["model"] and lead["score"] == best["score"]
    [item] = worklist["items"]
    assert item["score"] == best["score"] and {m["model"] for m in item["models"]} == set(results)
    positives = {m for m, r in results.items() if r["label"] in ("lesion", "nodule")}
    assert set(item["flagged_by"]) == positives


def test_radiographs_go_to_the_xray_model(byom, tmp_path) -> None:
    node, pipeline, _ = byom
    study_uid = generate_uid()
    files = [
        radiograph(tmp_path / "cr", study_uid=study_uid, instance=1, photometric="MONOCHROME1"),
        radiograph(tmp_path / "cr", study_uid=study_uid, instance=2, bits=10, opacity=True),
    ]
    ingest_files(node, files)
    node.queue.enqueue_if_due(study_uid, "manual")
    run_all(node, pipeline)
    results = _by_model(node, study_uid)
    assert set(results) == {"cxr-small", "chest-xray-opacity"}  # the shipped one runs too
    cxr = results["cxr-small"]
    assert cxr["status"] == "done" and cxr["details"]["slices"] == 2, cxr
    assert cxr["details"]["driving_sop_instance_uid"] in {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files
    }
    sr = _valid_sr(node, cxr["sr_sop_instance_uid"])
    assert _algorithm(sr) == ("cxr-small", "1.0")
    assert sr.ContentSequence  # a TID 1500 report
    [group] = hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
    assert group.finding_type == codes.DCM.AbnormalOpacity


def test_a_dx_image_of_another_body_part_is_for_no_model(byom, tmp_path) -> None:
    node, pipeline, _ = byom
    study_uid = generate_uid()
    ingest_files(
        node, [radiograph(tmp_path / "dx", study_uid=study_uid, modality="DX", body_part="HAND")]
    )
    node.queue.enqueue_if_due(study_uid, "manual")
    run_all(node, pipeline)
    result = study_result(node, study_uid)
    assert result["status"] == "out_of_scope" and result["model"] is None
    assert "cxr-small: body part examined HAND not in CHEST" in result["reason"]
    assert result["results"] == [] and sr_rows(node, study_uid) == []


def test_a_head_ct_is_out_of_scope_for_both_chest_models(byom) -> None:
    node, pipeline, _ = byom
    study = add_study(
        node,
        small("head", 8, 62),
        node.settings.data_dir.parent / "in",
    )
    run_all(node, pipeline)
    results = _by_model(node, study.study_instance_uid)
    assert {m: r["status"] for m, r in results.items()} == {
        "finding": "out_of_scope",
        "proto-ct": "out_of_scope",
    }
    assert results["proto-ct"]["label"] == "out of scope: head"
    assert "body part head" in results["proto-ct"]["reason"]
    assert len(sr_rows(node, study.study_instance_uid)) == 2  # each says "not evaluated"


def test_a_model_past_its_timeout_fails_alone(byom, tmp_path) -> None:
    node, pipeline, byom_registry = byom
    from tests.support.model_packages import prototype_cnn

    slow = write_package(tmp_path / "slow", prototype_cnn(), ct_card(version="1.1", timeout_s=1e-6))
    import_package(byom_registry, slow, activate=True)
    study = add_study(node, small("chest", 8, 63), tmp_path / "in")
    worker = run_all(node, pipeline)
    results = _by_model(node, study.study_instance_uid)
    assert results["proto-ct"]["status"] == "failed"
    assert "exceeded its timeout" in results["proto-ct"]["error"]
    assert results["finding"]["status"] == "done"
    assert node.queue.jobs_for(study.study_instance_uid)[0]["state"] == "done"
    assert worker.run_once() is False  # nothing left, nothing stuck


def test_feedback_is_recorded_per_model(byom) -> None:
    node, pipeline, _ = byom
    study = add_study(
        node,
        small("chest", 8, 64),
        node.settings.data_dir.parent / "in",
    )
    run_all(node, pipeline)
    uid = study.study_instance_uid
    proto = _by_model(node, uid)["proto-ct"]
    other = "no nodule" if proto["label"] == "nodule" else "nodule"
    service = FeedbackService(node)
    record, created = service.record(
        uid, "relabel", Reviewer("rad1", "Doe^Jane"), label=other, model="proto-ct"
    )
    assert created and record["model_name"] == "proto-ct" and record["label"] == other
    sr = pydicom.dcmread(stored_path(node, record["sr_sop_instance_uid"]))
    assert sr.VerificationFlag == "VERIFIED"
    assert [f["model_name"] for f in service.for_study(uid)] == ["proto-ct"]
    assert final_labels(node.index) == []  # the finding model's labels are its own
    with pytest.raises(Exception, match="label must be one of: no nodule, nodule"):
        service.record(
            uid, "relabel", Reviewer("rad1", "Doe^Jane"), label="lesion", model="proto-ct"
        )


def test_a_model_that_cannot_load_fails_alone_and_a_missing_verdict_is_named(
    byom, tmp_path
) -> None:
    node, pipeline, byom_registry = byom
    path = byom_registry.version_dir("proto-ct", "1.0") / "model.h5"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    spec = small("chest", 6, 65)
    study = add_study(node, spec, tmp_path / "a")
    run_all(node, pipeline)
    results = _by_model(node, study.study_instance_uid)
    assert results["proto-ct"]["status"] == "failed"
    assert (
        "cannot be loaded" in results["proto-ct"]["error"]
        and "sha256" in results["proto-ct"]["error"]
    )
    assert results["finding"]["status"] == "done"

    byom_registry.deactivate("proto-ct")
    byom_registry.deactivate("region")
    study = add_study(node, small("chest", 6, 66), tmp_path / "b")
    run_all(node, pipeline)
    results = _by_model(node, study.study_instance_uid)
    assert set(results) == {"finding"} and results["finding"]["status"] == "failed"
    assert "needs the verdict of model 'region'" in results["finding"]["error"]

    with TestClient(create_app(node)) as client:
        models = client.get("/api/models").json()["items"]
    listed = {(m["name"], m["version"]): m for m in models}
    assert not listed[("region", "1.0.0")]["active"] and listed[("finding", "1.0.0")]["active"]
    assert listed[("proto-ct", "1.0")]["card"]["sr"]["finding"] == "SCT.Nodule"
    assert listed[("cxr-small", "1.0")]["modalities"] == ["CR", "DX"]
