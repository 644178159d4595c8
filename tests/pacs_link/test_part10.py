"""Splitting a Part 10 file fetched from the PACS into what a C-STORE carries."""

from __future__ import annotations

import pytest

from ai_node.synth import StudySpec, write_study
from pacs_link.changes import split_part10
from tests.support.dicom_bytes import dataset_bytes


def test_split_part10_gives_the_dataset_bytes_and_syntax(tmp_path) -> None:
    _, [path] = write_study(
        StudySpec(region="chest", slices=1, seed=3, rows=16, columns=16), tmp_path
    )
    raw, ts, sop_class = split_part10(path.read_bytes())
    assert raw == dataset_bytes(path)
    assert ts == "1.2.840.10008.1.2.1" and sop_class == "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("blob", [b"", b"\0" * 200, b"\0" * 128 + b"DICM" + b"\0" * 20])
def test_split_part10_refuses_what_is_not_part10(blob: bytes) -> None:
    with pytest.raises(ValueError):
        split_part10(blob)
