"""The second prototype's shape: DenseNet121 (random weights, built in the test) imported
with a chest X-ray card and routed a radiograph study, beside the shipped CT models."""

from __future__ import annotations

import time

import highdicom as hd
from fastapi.testclient import TestClient
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ai_node.package import import_package
from ai_node.pipeline import AnalysisPipeline
from ai_node.registry import ModelSet
from dicomweb.app import create_app
from radnode.assembly import build_node
from radnode_core.settings import Settings
from tests.support.analysis import ingest_files, run_all
from tests.support.model_packages import cxr_card, densenet_cxr, radiograph, write_package
from tests.support.tools import dciodvfy


def test_densenet121_reads_chest_radiographs(byom_registry, tmp_path) -> None:
    started = time.perf_counter()
    package = write_package(tmp_path / "dn", densenet_cxr(), cxr_card())
    result = import_package(byom_registry, package, activate=True)
    assert result.report.format == "keras" and result.report.output_shape == (2, 1)
    node = build_node(
        Settings(data_dir=tmp_path / "data", fsync=False, models_dir=byom_registry.root)
    )
    try:
        study_uid = generate_uid()
        ingest_files(
            node,
            [
                radiograph(tmp_path / "cr", study_uid=study_uid, instance=1, opacity=True),
                radiograph(
                    tmp_path / "cr", study_uid=study_uid, instance=2, photometric="MONOCHROME1"
                ),
            ],
        )
        node.queue.enqueue_if_due(study_uid, "manual")
        run_all(node, AnalysisPipeline(node, ModelSet(byom_registry)))
        with TestClient(create_app(node)) as client:
            listed = client.get(f"/api/studies/{study_uid}/results").json()
        # the shipped chest-xray-opacity model reads the same radiographs, with its own result
        [item] = [i for i in listed["items"] if i["model"] == "cxr-densenet"]
        assert item["status"] == "done", item
        assert 0.0 <= item["score"] <= 1.0 and item["label"] in ("opacity", "no opacity")
        assert item["model_version"] == "cxr-densenet:1.0"
        row = node.index.find_instance(item["sr_sop_instance_uid"])
        assert row is not None
        path = node.store.path_of(str(row["path"]))
        report = dciodvfy(path)
        assert not [line for line in report.splitlines() if line.startswith("Error")], report
        sr = hd.sr.srread(path)
        [group] = hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
        assert group.finding_type == codes.DCM.AbnormalOpacity
        assert "cxr-densenet" in str(sr.ContentSequence)
    finally:
        node.close()
    print(f"DenseNet121 build, import, one study: {time.perf_counter() - started:.1f} s")
