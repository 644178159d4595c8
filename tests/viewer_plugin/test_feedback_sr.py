"""The verified and amended SRs: VERIFIED, verifying observer, predecessor, dciodvfy-clean."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ai_node.analysis import StudyAnalysis
from ai_node.feedback_sr import build_feedback_sr
from ai_node.localise import Location
from ai_node.preprocess import SliceRef
from ai_node.sr import build_sr
from tests.support.analysis import REPORT_CONTEXT as CTX
from tests.support.analysis import meaning, small_study_headers
from tests.support.tools import dciodvfy


@pytest.fixture(scope="module")
def ai_sr(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pydicom.Dataset, list[pydicom.Dataset]]:
    out = tmp_path_factory.mktemp("fb_study")
    headers = small_study_headers(out)
    refs = [SliceRef(str(headers[2].SOPClassUID), str(headers[2].SOPInstanceUID))]
    analysis = StudyAnalysis(
        "chest",
        {"chest": 0.99},
        True,
        0.87,
        2,
        [],
        [2],
        {"finding": "1.0.0", "region": "1.0.0"},
        location=Location(2, refs[0], 30.5, 12.5, 64, 64, "max_activation", "conv2d_4"),
    )
    sr = build_sr(headers, analysis, refs, CTX, str(headers[0].StudyInstanceUID), 1)
    path = out / "ai.dcm"
    sr.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path), headers


def _lesion_value(path: Path) -> str:
    back = hd.sr.srread(path)
    [group] = hd.sr.MeasurementReport.from_sequence([back]).get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations(name=codes.SCT.Lesion)
    return meaning(evaluation.value)


@pytest.mark.parametrize("label", [None, "no lesion"])
def test_feedback_sr_is_verified_successor_and_valid(ai_sr, tmp_path, label) -> None:
    predecessor, headers = ai_sr
    sr = build_feedback_sr(
        predecessor,
        headers,
        observer_name="Doe^Jane",
        organization="General Hospital",
        label=label,
        feedback_key="1",
    )
    path = tmp_path / "fb.dcm"
    sr.save_as(path, enforce_file_format=True)
    report = dciodvfy(path)
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    assert "Warning" not in report, report
    ds = pydicom.dcmread(path)
    assert ds.VerificationFlag == "VERIFIED" and ds.CompletionFlag == "COMPLETE"
    [observer] = ds.VerifyingObserverSequence
    assert observer.VerifyingObserverName == "Doe^Jane"
    assert observer.VerifyingOrganization == "General Hospital"
    assert observer.VerificationDateTime
    [pre_study] = ds.PredecessorDocumentsSequence
    pre = pre_study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pre.ReferencedSOPInstanceUID == predecessor.SOPInstanceUID
    assert ds.StudyInstanceUID == predecessor.StudyInstanceUID
    assert ds.SOPInstanceUID != predecessor.SOPInstanceUID
    assert _lesion_value(path) == ("Present" if label is None else "Absent")
    # the finding's mark is kept, its evaluation relabelled with the study's
    [roi] = hd.sr.MeasurementReport.from_sequence(
        [hd.sr.srread(path)]
    ).get_planar_roi_measurement_groups()
    assert roi.roi is not None and roi.roi.GraphicType == "POINT"
    assert roi.roi.value.tolist() == [[30.5, 12.5]]
    [evaluation] = roi.get_qualitative_evaluations(name=codes.SCT.Lesion)
    assert meaning(evaluation.value) == ("Present" if label is None else "Absent")


def test_relabel_needs_a_known_label(ai_sr) -> None:
    predecessor, headers = ai_sr
    with pytest.raises(ValueError, match="label"):
        build_feedback_sr(
            predecessor,
            headers,
            observer_name="Doe^Jane",
            organization="H",
            label="maybe",
            feedback_key="1",
        )
