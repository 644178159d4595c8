"""The labels, defined once (ai_node.labels): the AI's label, the SR's coded value, a
relabel's choices and the training target are the same vocabulary; so are the regions."""

from __future__ import annotations

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ai_node.analysis import StudyAnalysis
from ai_node.labels import (
    FINDING_LABELS,
    LESION,
    NO_LESION,
    POSITIVE,
    REGION_CODES,
    REGION_LABELS,
    SR_CODES,
    TARGETS,
    finding_label,
)
from ai_node.preprocess import SliceRef
from ai_node.sr import build_sr
from tests.support.analysis import REPORT_CONTEXT as CTX
from tests.support.analysis import small_study_headers


def test_one_vocabulary() -> None:
    assert FINDING_LABELS == (NO_LESION, LESION) == ("no lesion", "lesion")
    assert set(SR_CODES) == set(TARGETS) == set(FINDING_LABELS)
    assert POSITIVE == LESION and TARGETS == {NO_LESION: 0, LESION: 1}
    assert SR_CODES == {NO_LESION: codes.SCT.Absent, LESION: codes.SCT.Present}
    assert finding_label(0.5, 0.5) == LESION and finding_label(0.49, 0.5) == NO_LESION
    assert tuple(REGION_CODES) == REGION_LABELS


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    return small_study_headers(tmp_path_factory.mktemp("labels_study"))


@pytest.mark.parametrize("score", [0.87, 0.5, 0.12])
def test_ai_sr_says_the_label_the_result_row_says(headers, score: float) -> None:
    analysis = StudyAnalysis(
        "chest", {"chest": 0.99}, True, score, 2, [], [2], {"finding": "1.0.0", "region": "1.0.0"}
    )
    refs = [SliceRef(str(headers[2].SOPClassUID), str(headers[2].SOPInstanceUID))]
    sr = build_sr(headers, analysis, refs, CTX, str(headers[0].StudyInstanceUID), 1)
    report = hd.sr.MeasurementReport.from_sequence([sr])
    [group] = report.get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations(name=codes.SCT.Lesion)
    assert evaluation.value == SR_CODES[finding_label(score, CTX.threshold)]
