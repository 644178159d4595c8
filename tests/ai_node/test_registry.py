"""The model registry: versions, activation, reload without restart; lazy loading."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ai_node.registry import SHIPPED_MODELS, ModelRegistry, ModelSet, RegistryError
from radnode.ai_commands import cmd_model_activate, cmd_model_list
from radnode.cli import build_parser


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """A copy of the shipped registry with a second finding version "2.0.0"."""
    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, root)
    reg = ModelRegistry(root)
    shipped = reg.active_version("finding")
    shutil.copytree(root / "finding" / shipped, root / "finding" / "2.0.0")
    return reg


def test_shipped_models_have_cards_and_an_active_version() -> None:
    reg = ModelRegistry()
    for task in ("region", "finding"):
        version = reg.active_version(task)
        card = reg.card(task, version)
        assert card["name"] == task and card["version"] == version
        assert "NOT FOR CLINICAL USE" in card["intended_use"]
        assert "synthetic" in card["training_data"]
        assert (reg.version_dir(task, version) / "model.keras").stat().st_size < 2_000_000


def test_activate_switches_the_model_without_restart(registry: ModelRegistry) -> None:
    models = ModelSet(registry)
    first = models.get("finding")
    assert models.get("finding") is first  # reused across jobs
    registry.activate("finding", "2.0.0")
    second = models.get("finding")
    assert second.version == "2.0.0" and second is not first
    with pytest.raises(RegistryError):
        registry.activate("finding", "9.9.9")
    with pytest.raises(RegistryError):
        registry.version_dir("finding", "../escape")


def test_model_cli_list_and_activate(registry: ModelRegistry, capsys) -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["model", "activate", "--models-dir", str(registry.root), "finding", "2.0.0"]
    )
    assert cmd_model_activate(args) == 0
    assert registry.active_version("finding") == "2.0.0"
    args = parser.parse_args(["model", "list", "--models-dir", str(registry.root)])
    assert cmd_model_list(args) == 0
    out = capsys.readouterr().out
    rows = [line.split("│") for line in out.splitlines() if "│" in line]
    cells = [[c.strip() for c in row if c.strip()] for row in rows]
    assert ["finding", "2.0.0", "*", "binary", "CT"] in [c[:5] for c in cells]
    assert any(c[:2] == ["region", "1.0.0"] for c in cells)


def test_importing_the_ai_node_and_parsing_the_cli_loads_no_tensorflow() -> None:
    code = (
        "import sys; import ai_node.pipeline, ai_node.worker, radnode.ai_commands, radnode.cli;"
        "radnode.cli.build_parser().parse_args(['model', 'list']);"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2]
    )
