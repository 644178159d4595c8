"""Fixtures shared by the test folders: a synthetic study, a running radnode SCP, the
shipped models, a small filesystem.

Servers run as subprocesses on free loopback ports and are stopped by the fixture that
started them. Helpers that are not fixtures live in ``tests/support``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_node.registry import ModelRegistry, ModelSet
from ai_node.synth import StudySpec, SyntheticStudy, write_study
from tests.support.radnode_process import RadnodeProcess


@pytest.fixture
def radnode_scp(tmp_path: Path) -> Iterator[RadnodeProcess]:
    node = RadnodeProcess(tmp_path / "data", "scp").start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def chest_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticStudy, list[Path]]:
    """A 100-slice 512x512 synthetic chest CT with two nodules (written once per session)."""
    out = tmp_path_factory.mktemp("chest_study")
    return write_study(StudySpec(region="chest", slices=100, nodules=2, seed=7), out)


@pytest.fixture(scope="session")
def shipped_models() -> ModelSet:
    """The shipped models, loaded once for the whole session."""
    return ModelSet(ModelRegistry())


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 12 MiB tmpfs: writes fail with ENOSPC when it is full."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)
