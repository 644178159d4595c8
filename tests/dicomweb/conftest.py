"""Fixtures of the DICOMweb tests: a running `radnode api`, varied small studies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.dicomweb_studies import VariedStudies, make_varied_studies
from tests.support.radnode_process import RadnodeProcess


@pytest.fixture(scope="session")
def varied_studies() -> VariedStudies:
    return make_varied_studies()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    """`radnode api` (authentication off, on 127.0.0.1) with an empty store."""
    root = tmp_path_factory.mktemp("dicomweb-api")
    node = RadnodeProcess(root / "data", "api").start()
    yield node
    node.stop()
