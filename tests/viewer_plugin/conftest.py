"""Fixtures of the viewer tests: a node with one analysed study (real models, real SR)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_node.pipeline import AnalysisPipeline
from ai_node.registry import ModelSet
from ai_node.synth import StudySpec
from tests.support.analysis import add_study, run_all
from tests.support.viewer import Analysed, make_node


@pytest.fixture
def analysed(tmp_path: Path, shipped_models: ModelSet) -> Iterator[Analysed]:
    node = make_node(tmp_path / "data", auth=True)
    spec = StudySpec(region="chest", slices=16, nodules=1, seed=3, rows=128, columns=128)
    study = add_study(node, spec, tmp_path / "in")
    run_all(node, AnalysisPipeline(node, shipped_models))
    yield Analysed(node, study.study_instance_uid, list(study.sop_instance_uids))
    node.close()
