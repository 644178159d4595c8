"""Helpers of the viewer tests: a node with the viewer roles' tokens, studies analysed by
the real models (real SRs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_node.pipeline import AnalysisPipeline
from ai_node.registry import ModelSet
from ai_node.synth import StudySpec
from radnode.assembly import build_node
from radnode_core.node import Node
from radnode_core.settings import Settings
from tests.support.analysis import add_study, run_all

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
