"""Fixtures of the viewer tests: a node with one analysed study (real models, real SR)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

for _helpers in ("ai_node", "pacs_link"):  # their fixture modules (not conftest.py files)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / _helpers))
from ai_fixtures import add_study, run_all, shipped_models  # noqa: E402,F401

from ai_node.pipeline import AnalysisPipeline  # noqa: E402
from ai_node.registry import ModelSet  # noqa: E402
from ai_node.synth import StudySpec  # noqa: E402
from radnode.assembly import build_node
from radnode_core.node import Node  # noqa: E402
from radnode_core.settings import Settings  # noqa: E402

RADIOLOGIST = "rad-token-0123456789"
VIEWER = "viewer-token-0123456789"
ADMIN = "admin-token-0123456789"


@dataclass
class Analysed:
    node: Node
    study_uid: str
    sop_instance_uids: list[str]


def make_node(data_dir: Path, auth: bool, **settings: Any) -> Node:
    extra: dict[str, Any] = dict(settings)
    if auth:
        extra |= {
            "auth_enabled": True,
            "api_tokens": {RADIOLOGIST: "radiologist", VIEWER: "viewer", ADMIN: "admin"},
            "radiologist_names": {RADIOLOGIST: "Doe^Jane"},
            "verifying_organization": "General Hospital",
        }
    return build_node(Settings(data_dir=data_dir, fsync=False, **extra))


def analyse_studies(node: Node, models: ModelSet, out: Path, specs: list[StudySpec]) -> list[str]:
    uids = [add_study(node, spec, out / str(i)).study_instance_uid for i, spec in enumerate(specs)]
    run_all(node, AnalysisPipeline(node, models))
    return uids


@pytest.fixture
def analysed(tmp_path: Path, shipped_models: ModelSet) -> Iterator[Analysed]:  # noqa: F811
    node = make_node(tmp_path / "data", auth=True)
    spec = StudySpec(region="chest", slices=16, nodules=1, seed=3, rows=128, columns=128)
    study = add_study(node, spec, tmp_path / "in")
    run_all(node, AnalysisPipeline(node, shipped_models))
    yield Analysed(node, study.study_instance_uid, list(study.sop_instance_uids))
    node.close()
