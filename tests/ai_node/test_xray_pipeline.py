"""The shipped chest X-ray model in the analysis pipeline: radiographs from
``radnode synth xray`` are routed to it (and to no CT model), read as its training read
them, and reported in an SR."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import keras
import numpy as np
import pydicom
import yaml
from pydicom.sr.codedict import codes

from ai_node.pipeline import AnalysisPipeline
from ai_node.registry import SHIPPED_MODELS
from ai_node.results import ResultStore
from ai_node.xray_preprocess import image_input_of, radiograph_input
from ai_node.xray_synth import XraySpec, write_radiographs
from radnode_core.node import Node
from tests.support.analysis import ingest_files, run_all, sr_rows
from tests.support.tools import dciodvfy

PACKAGE = SHIPPED_MODELS / "chest-xray-opacity" / "1.0.0"

# Held-out seeds (never trained on): CR and DX, MONOCHROME1 and 2, 10 to 16 bits.
SPECS = [
    XraySpec(seed=3_900_010, opacities=2, size=512, sop_class="cr", bits=12),
    XraySpec(seed=3_900_011, opacities=0, size=512, sop_class="cr", monochrome1=True, bits=10),
    XraySpec(seed=3_900_012, opacities=3, size=768, sop_class="dx", monochrome1=True, bits=16),
    XraySpec(seed=3_900_013, opacities=0, size=384, sop_class="dx", bits=14),
]


def test_radiographs_are_scored_by_the_shipped_xray_model_as_it_was_trained(
    node: Node, pipeline: AnalysisPipeline, tmp_path: Path
) -> None:
    written: list[tuple[bool, Path]] = []
    for i, spec in enumerate(SPECS):
        _, [path] = write_radiographs(spec, tmp_path / f"xr{i}")
        written.append((spec.opacities > 0, path))
    for _, path in written:
        ingest_files(node, [path])
        node.queue.enqueue_if_due(str(pydicom.dcmread(path).StudyInstanceUID), "manual")
    run_all(node, pipeline)

    card = yaml.safe_load((PACKAGE / "model.yaml").read_text())
    how = image_input_of(card["input"])
    model = keras.models.load_model(PACKAGE / "model.keras", safe_mode=True)
    store = ResultStore(node.index)
    for positive, path in written:
        ds = pydicom.dcmread(path)
        result = store.study_result(str(ds.StudyInstanceUID))
        assert result is not None
        by_model = {r["model"]: r for r in result["results"]}
        assert set(by_model) == {"chest-xray-opacity"}, result  # no CT model runs on it
        xray = by_model["chest-xray-opacity"]
        assert xray["status"] == "done", xray
        assert xray["label"] == ("opacity" if positive else "no opacity"), xray

        # The pipeline's input is the training's: the same score, recomputed here.
        x = radiograph_input(ds, how).array[None]
        expected = float(np.asarray(model.predict(x, verbose=0)).reshape(-1)[0])
        assert abs(xray["score"] - expected) < 1e-3, (xray["score"], expected)

        [sr_row] = sr_rows(node, str(ds.StudyInstanceUID))
        sr_path = node.store.path_of(str(sr_row["path"]))
        report = dciodvfy(sr_path)
        assert not [line for line in report.splitlines() if line.startswith("Error")], report
        sr = hd.sr.srread(sr_path)
        [group] = hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
        assert group.finding_type == codes.DCM.AbnormalOpacity
        assert group.finding_sites[0].value == codes.SCT.Lung
