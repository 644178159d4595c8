"""The SR: TID 1500 built with highdicom, valid per dciodvfy, readable with srread."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sr.codedict import codes

from ai_node import sr as sr_module
from ai_node.analysis import StudyAnalysis
from ai_node.localise import Location
from ai_node.pipeline import encode
from ai_node.preprocess import SliceRef
from ai_node.sr import PROBABILITY, build_sr, sr_uids
from tests.support.analysis import REPORT_CONTEXT as CTX
from tests.support.analysis import meaning, small_study_headers
from tests.support.tools import dciodvfy


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    return small_study_headers(tmp_path_factory.mktemp("sr_study"))


def _save(sr: pydicom.Dataset, tmp_path: Path) -> Path:
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def _errors(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("Error")]


def test_finding_sr_passes_dciodvfy_and_reads_back(headers, tmp_path) -> None:
    analysis = StudyAnalysis(
        "chest", {"chest": 0.99}, True, 0.87, 2, [], [2], {"finding": "1.0.0", "region": "1.0.0"}
    )
    refs = [SliceRef(str(headers[2].SOPClassUID), str(headers[2].SOPInstanceUID))]
    sr = build_sr(headers, analysis, refs, CTX, str(headers[0].StudyInstanceUID), 6)
    path = _save(sr, tmp_path)
    report = dciodvfy(path)
    assert not _errors(report), report
    assert "Warning" not in report, report

    back = hd.sr.srread(path)
    assert back.StudyInstanceUID == headers[0].StudyInstanceUID
    assert back.PatientID == headers[0].PatientID
    assert back.SeriesInstanceUID != headers[0].SeriesInstanceUID
    assert (back.CompletionFlag, back.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    [group] = hd.sr.MeasurementReport.from_sequence([back]).get_image_measurement_groups()
    [measurement] = group.get_measurements(name=PROBABILITY)
    assert measurement.value == pytest.approx(0.87)
    assert measurement.unit.value == "1"
    evaluations = {e.name.meaning: meaning(e.value) for e in group.get_qualitative_evaluations()}
    assert evaluations["Lesion"] == "Present"
    assert "radnode-finding" in str(back.ContentSequence)
    assert group.finding_sites[0].value == codes.SCT.Lung
    assert [i.referenced_sop_instance_uid for i in group.source_images] == [
        headers[2].SOPInstanceUID
    ]


def test_out_of_scope_sr_says_not_evaluated(headers, tmp_path) -> None:
    analysis = StudyAnalysis("head", {"head": 0.98}, False, model_versions={"region": "1.0.0"})
    refs = [SliceRef(str(headers[3].SOPClassUID), str(headers[3].SOPInstanceUID))]
    sr = build_sr(headers[:4], analysis, refs, CTX, str(headers[0].StudyInstanceUID), 6)
    path = _save(sr, tmp_path)
    report = dciodvfy(path)
    assert not _errors(report), report
    back = hd.sr.srread(path)
    group = hd.sr.MeasurementReport.from_sequence([back]).get_image_measurement_groups()[0]
    evaluations = {e.name.meaning: meaning(e.value) for e in group.get_qualitative_evaluations()}
    assert evaluations == {"Lesion": "Not Evaluated", "Target Region": "Head"}
    assert group.get_measurements() == []
    assert "out of scope" in back.SeriesDescription


def test_uids_are_deterministic_per_study_version_and_models() -> None:
    a = sr_uids("1.2.3", 6, "finding:1,region:1")
    assert a == sr_uids("1.2.3", 6, "finding:1,region:1")
    assert a[1] != sr_uids("1.2.3", 7, "finding:1,region:1")[1]
    assert a[1] != sr_uids("1.2.3", 6, "finding:2,region:1")[1]


def _roi_groups(back: pydicom.Dataset) -> list[Any]:
    return hd.sr.MeasurementReport.from_sequence([back]).get_planar_roi_measurement_groups()


def _source_uid(region: pydicom.Dataset) -> str:
    return str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def _tracking_uid(group: Any) -> str:
    [item] = [i for i in group[0].ContentSequence if i.ValueType == "UIDREF"]
    return str(item.UID)


def test_a_located_finding_is_a_tid1410_point_on_its_image(headers, tmp_path) -> None:
    ref = SliceRef(str(headers[2].SOPClassUID), str(headers[2].SOPInstanceUID))
    location = Location(2, ref, 40.5, 22.25, 64, 64, "max_activation", "conv2d_5")
    analysis = StudyAnalysis(
        "chest",
        {"chest": 0.99},
        True,
        0.87,
        2,
        [],
        [2],
        {"finding": "1.0.0", "region": "1.0.0"},
        location=location,
    )
    sr = build_sr(headers, analysis, [ref], CTX, str(headers[0].StudyInstanceUID), 6)
    path = _save(sr, tmp_path)
    report = dciodvfy(path)
    assert not _errors(report), report

    back = hd.sr.srread(path)
    [roi] = _roi_groups(back)
    region = roi.roi
    assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POINT
    assert region.value.tolist() == [[40.5, 22.25]]
    assert _source_uid(region) == headers[2].SOPInstanceUID
    assert roi.finding_type == codes.SCT.Lesion
    assert roi.finding_sites[0].value == codes.SCT.Lung
    evaluations = {e.name.meaning: meaning(e.value) for e in roi.get_qualitative_evaluations()}
    assert evaluations == {"Lesion": "Present"}
    [probability] = roi.get_measurements(name=PROBABILITY)
    assert probability.value == pytest.approx(0.87)
    identifier = next(i for i in roi[0].ContentSequence if i.ValueType == "TEXT")
    assert identifier.TextValue == "AI lesion finding"
    # the study-level group stays beside it, the same finding (one tracking UID)
    [study_group] = hd.sr.MeasurementReport.from_sequence([back]).get_image_measurement_groups()
    assert _tracking_uid(study_group) == _tracking_uid(roi)


@pytest.mark.parametrize("in_scope", [True, False])
def test_an_unlocated_result_outlines_the_image_it_names(headers, tmp_path, in_scope) -> None:
    """Negative and out-of-scope SRs still give every group a SCOORD on an image."""
    if in_scope:
        analysis = StudyAnalysis(
            "chest", {"chest": 0.99}, True, 0.1, 3, [], [3], {"finding": "1.0.0"}
        )
    else:
        analysis = StudyAnalysis("head", {"head": 0.98}, False, model_versions={"region": "1"})
    ref = SliceRef(str(headers[3].SOPClassUID), str(headers[3].SOPInstanceUID))
    sr = build_sr(headers, analysis, [ref], CTX, str(headers[0].StudyInstanceUID), 6)
    path = _save(sr, tmp_path)
    report = dciodvfy(path)
    assert not _errors(report), report
    back = hd.sr.srread(path)
    [roi] = _roi_groups(back)
    region = roi.roi
    assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    assert region.value.tolist() == [[0, 0], [64, 0], [64, 64], [0, 64], [0, 0]]
    assert _source_uid(region) == headers[3].SOPInstanceUID
    [study_group] = hd.sr.MeasurementReport.from_sequence([back]).get_image_measurement_groups()
    assert _tracking_uid(study_group) == _tracking_uid(roi)


_TIMES = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _bytes_at_a_fixed_time(sr: pydicom.Dataset) -> bytes:
    for keyword in _TIMES:
        setattr(sr, keyword, "20260101" if keyword.endswith("Date") else "120000")
    for item in sr.ContributingEquipmentSequence:
        if "ContributionDateTime" in item:
            item.ContributionDateTime = "20260101120000"
    return encode(sr)


@pytest.mark.parametrize("result", ["located", "positive", "negative", "out_of_scope"])
def test_the_uncopied_content_gives_the_sr_highdicom_copying_it_gives(
    headers, monkeypatch, result
) -> None:
    """build_sr hands highdicom its content tree without the defensive copy; the SR is byte
    for byte the one the copying constructor makes (the times it stamps aside)."""
    ref = SliceRef(str(headers[2].SOPClassUID), str(headers[2].SOPInstanceUID))
    versions = {"finding": "1.0.0", "region": "1.0.0"}
    location = Location(2, ref, 40.5, 22.25, 64, 64, "max_activation", "conv2d_5")
    analysis = {
        "located": StudyAnalysis(
            "chest", {"chest": 0.99}, True, 0.87, 2, [], [2], versions, location=location
        ),
        "positive": StudyAnalysis("chest", {"chest": 0.99}, True, 0.87, 2, [], [2], versions),
        "negative": StudyAnalysis("chest", {"chest": 0.99}, True, 0.1, 2, [], [2], versions),
        "out_of_scope": StudyAnalysis("head", {"head": 0.98}, False, model_versions=versions),
    }[result]
    study_uid = str(headers[0].StudyInstanceUID)
    library = [headers[2]]

    def build() -> bytes:
        sr = build_sr(headers, analysis, [ref], CTX, study_uid, 6, library=library)
        assert sr.content[0].ContentSequence == sr.ContentSequence
        return _bytes_at_a_fixed_time(sr)

    uncopied = build()
    monkeypatch.delattr(sr_module._OwnedContent, "__deepcopy__")
    assert build() == uncopied


def _plain_encode(ds: pydicom.Dataset) -> bytes:
    """pydicom's writer on its own (ambiguous-VR correction included)."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def test_an_sr_encodes_as_pydicom_writes_it(headers) -> None:
    """encode declares the SR's datasets already explicit VR little endian, so pydicom
    skips its ambiguous-VR pass: the bytes are the ones pydicom writes with it."""
    ref = SliceRef(str(headers[2].SOPClassUID), str(headers[2].SOPInstanceUID))
    analysis = StudyAnalysis(
        "chest", {"chest": 0.99}, True, 0.87, 2, [], [2], {"finding": "1.0.0", "region": "1.0.0"}
    )
    sr = build_sr(headers, analysis, [ref], CTX, str(headers[0].StudyInstanceUID), 6)
    sr.SpecificCharacterSet = "ISO_IR 192"
    sr.PatientName = "Müller^Jürgen"
    expected = _plain_encode(copy.deepcopy(sr))
    assert encode(sr) == expected
    assert sr.original_encoding == (False, True)


def test_a_dataset_with_an_ambiguous_vr_is_still_corrected() -> None:
    """An element whose VR depends on another (US or SS on Pixel Representation) leaves
    the dataset undeclared, and pydicom writes it as SS."""
    ds = pydicom.Dataset()
    ds.PixelRepresentation = 1
    item = pydicom.Dataset()
    item.add_new(0x00280106, "US or SS", -5)  # Smallest Image Pixel Value
    item.PixelRepresentation = 1
    ds.add_new(0x00081140, "SQ", [item])  # Referenced Image Sequence, as a carrier
    encoded = encode(ds)
    assert encoded == _plain_encode(copy.deepcopy(ds))
    assert b"\x28\x00\x06\x01SS" in encoded
    assert ds.original_encoding == (None, None)
