"""Fixtures of the AI node tests: an in-process node and the analysis pipeline on it; a
writable model registry and a model package (bring your own model)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_node.pipeline import AnalysisPipeline
from ai_node.registry import SHIPPED_MODELS, ModelRegistry, ModelSet
from radnode.assembly import build_node
from radnode_core.node import Node
from radnode_core.settings import Settings
from tests.support.model_packages import ct_card, prototype_cnn, write_package


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = build_node(Settings(data_dir=tmp_path / "data", fsync=False))
    yield n
    n.close()


@pytest.fixture
def pipeline(node: Node, shipped_models: ModelSet) -> AnalysisPipeline:
    return AnalysisPipeline(node, shipped_models)


@pytest.fixture
def byom_registry(tmp_path: Path) -> ModelRegistry:
    """A writable registry seeded with the shipped models (region, finding)."""
    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, root, ignore=shutil.ignore_patterns("__pycache__", ".lock"))
    return ModelRegistry(root)


@pytest.fixture(scope="module")
def proto_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prototype CNN as a legacy Keras 2 HDF5 (.h5) package for chest CT."""
    folder = tmp_path_factory.mktemp("proto") / "proto-ct"
    return write_package(folder, prototype_cnn(), ct_card())
