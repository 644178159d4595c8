"""Fixtures of the AI node tests: an in-process node and the analysis pipeline on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_node.pipeline import AnalysisPipeline
from ai_node.registry import ModelSet
from radnode.assembly import build_node
from radnode_core.node import Node
from radnode_core.settings import Settings


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = build_node(Settings(data_dir=tmp_path / "data", fsync=False))
    yield n
    n.close()


@pytest.fixture
def pipeline(node: Node, shipped_models: ModelSet) -> AnalysisPipeline:
    return AnalysisPipeline(node, shipped_models)
