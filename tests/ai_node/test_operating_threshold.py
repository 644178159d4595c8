"""The worker reports findings at the active model's own operating threshold (its card's
``operating_point.threshold``), the node's ``finding_threshold`` only when the card has
none, and follows the threshold when another version is activated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ai_node.pipeline import AnalysisPipeline
from ai_node.registry import SHIPPED_MODELS, ModelRegistry, ModelSet
from ai_node.synth import StudySpec
from radnode.assembly import build_node
from radnode_core.settings import Settings
from tests.support.analysis import add_study, run_all, study_result


def test_the_card_threshold_wins_and_follows_activation(tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, root, ignore=shutil.ignore_patterns("__pycache__"))
    registry = ModelRegistry(root)
    node = build_node(
        Settings(data_dir=tmp_path / "data", fsync=False, models_dir=root, finding_threshold=0.4)
    )
    try:
        pipeline = AnalysisPipeline(node, ModelSet(registry))
        assert "threshold" not in registry.card("finding", "1.0.0")["operating_point"]
        assert pipeline.threshold == 0.4  # the shipped card leaves it to the settings

        card = registry.card("finding", "1.0.0")
        model_file = root / "finding" / "1.0.0" / "model.keras"
        eager = {**card, "version": "eager", "operating_point": {"threshold": 0.0001}}
        registry.register("finding", "eager", model_file, eager, activate=True)
        assert pipeline.threshold == 0.0001
        spec = StudySpec(region="chest", slices=12, nodules=0, seed=11, rows=128, columns=128)
        study = add_study(node, spec, tmp_path / "in")
        run_all(node, pipeline)
        result = study_result(node, study.study_instance_uid)
        assert result["status"] == "done" and 0.0001 <= result["score"] < 0.4
        assert result["label"] == "lesion" and result["details"]["threshold"] == 0.0001

        registry.activate("finding", "1.0.0")
        assert pipeline.threshold == 0.4
    finally:
        node.close()


def test_a_failed_result_records_the_models_active_when_it_failed(tmp_path: Path) -> None:
    """A study no active model is for (no CT series) is out of scope; its result names the
    active models, so the studies a model did not analyse can be found again."""
    node = build_node(Settings(data_dir=tmp_path / "data", fsync=False))
    try:
        spec = StudySpec(region="chest", slices=2, seed=12, rows=32, columns=32)
        study = add_study(node, spec, tmp_path / "in")
        with node.index.transaction() as conn:  # make its only series a non-CT one
            from sqlalchemy import update

            from radnode_core.index import instances

            conn.execute(
                update(instances)
                .where(instances.c.study_uid == study.study_instance_uid)
                .values(sop_class_uid="1.2.840.10008.5.1.4.1.1.7")
            )
        pipeline = AnalysisPipeline(node, ModelSet(ModelRegistry()))
        run_all(node, pipeline)
        result = study_result(node, study.study_instance_uid)
        assert result["status"] == "out_of_scope" and "no active model" in result["reason"]
        assert result["model_version"] == "chest-xray-opacity:1.0.0,finding:1.0.0,region:1.0.0"
        assert json.dumps(result)  # the API can answer it
    finally:
        node.close()
