"""De-identification of the retraining export (PS3.15 E Basic profile, Modified Dates):
canary PHI seeded everywhere must not survive in any byte of the exported data set."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from ai_node.retrain.deid import Deidentifier, DeidError, remap_uid
from ai_node.retrain.export import LabelledStudy, export_studies
from ai_node.synth import StudySpec, generate_study

SALT = "test-salt-0123456789"

CANARIES = {
    "name": "CANARYNAME",
    "patient_id": "CANARYPID",
    "birth_date": "19230417",
    "birth_time": "031742.918273",  # Patient's Birth Time: X in Table E.1-1
    "contrast_time": "041953.817264",  # Contrast/Bolus Start Time: X
    "pps_time": "052143.716355",  # Performed Procedure Step Start Time: X
    "institution": "CANARYINSTITUTION",
    "referrer": "CANARYREFERRER",
    "image_comments": "CANARYIMAGECOMMENT",
    "study_comments": "CANARYSTUDYCOMMENT",
    "description": "CANARYDESCRIPTION",
    "nested": "CANARYNESTED",
    "nested_name": "CANARYOPERATOR",
    "private": "CANARYPRIVATE",
    "private_creator": "CANARYCREATOR",
    "accession": "CANARYACC",
}


def _seeded_study(seed: int, patient: str) -> list[Dataset]:
    """A small synthetic study with canary PHI in every kind of place."""
    spec = StudySpec(region="chest", slices=4, seed=seed, rows=64, columns=64)
    _, datasets = generate_study(spec)
    out = []
    for ds in datasets:
        ds.PatientName = f"{CANARIES['name']}^{patient}"
        ds.PatientID = f"{CANARIES['patient_id']}{patient}"
        ds.PatientBirthDate = CANARIES["birth_date"]
        ds.PatientBirthTime = CANARIES["birth_time"]
        ds.ContrastBolusStartTime = CANARIES["contrast_time"]
        ds.PerformedProcedureStepStartTime = CANARIES["pps_time"]
        ds.InstitutionName = CANARIES["institution"]
        ds.ReferringPhysicianName = f"{CANARIES['referrer']}^Doc"
        ds.ImageComments = CANARIES["image_comments"]
        ds.StudyComments = CANARIES["study_comments"]
        ds.StudyDescription = CANARIES["description"]
        ds.AccessionNumber = CANARIES["accession"]
        ds.ContributingEquipmentSequence = [
            Dataset(),
        ]
        item = ds.ContributingEquipmentSequence[0]
        item.InstitutionName = CANARIES["nested"]
        item.OperatorsName = f"{CANARIES['nested_name']}^Nested"
        item.ContributionDateTime = "20200102030405"
        item.Manufacturer = "radnode synth"
        request = Dataset()
        request.RequestedProcedureDescription = CANARIES["nested"]
        ds.RequestAttributesSequence = [request]
        block = ds.private_block(0x0011, CANARIES["private_creator"], create=True)
        block.add_new(0x01, "LO", CANARIES["private"])
        block.add_new(0x02, "OB", CANARIES["private"].encode() + b"\x00")  # not text: by tag
        out.append(ds)
    # a reference between instances inside a nested sequence: must follow the remapping
    ref = Dataset()
    ref.ReferencedSOPClassUID = out[1].SOPClassUID
    ref.ReferencedSOPInstanceUID = out[1].SOPInstanceUID
    out[0].ReferencedImageSequence = [ref]
    return out


@pytest.fixture(scope="module")
def studies() -> dict[str, list[Dataset]]:
    """Two studies of patient A, one of patient B (study UID -> instances)."""
    out = {}
    for seed, patient in ((11, "A"), (12, "A"), (13, "B")):
        instances = _seeded_study(seed, patient)
        out[str(instances[0].StudyInstanceUID)] = instances
    return out


def _export(studies: dict[str, list[Dataset]], out: Path) -> dict:
    labels = [LabelledStudy(uid, "lesion", i + 1) for i, uid in enumerate(studies)]
    return export_studies(out, labels, lambda uid: studies[uid], SALT, 0.0, 0.5)


def test_no_canary_survives_in_any_byte(studies, tmp_path: Path) -> None:
    manifest = _export(studies, tmp_path / "export")
    files = [p for p in (tmp_path / "export").rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".dcm"]) == 12
    originals = {
        str(getattr(ds, kw))
        for instances in studies.values()
        for ds in instances
        for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
    }
    for path in files:
        data = path.read_bytes()
        upper = data.upper()
        for what, canary in CANARIES.items():
            assert canary.encode() not in upper, f"{what} canary in {path.name}"
        for uid in originals:
            assert uid.encode() not in data, f"original UID {uid} in {path.name}"
    assert manifest["labels_upto"] == 3


def test_profile_attributes_preamble_and_no_private_tags(studies, tmp_path: Path) -> None:
    _export(studies, tmp_path / "export")
    for path in (tmp_path / "export").rglob("*.dcm"):
        raw = path.read_bytes()
        assert raw[:128] == b"\x00" * 128 and raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethod
        assert {
            (c.CodeValue, c.CodingSchemeDesignator) for c in ds.DeidentificationMethodCodeSequence
        } == {
            ("113100", "DCM"),
            ("113107", "DCM"),
        }
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert ds.PatientBirthDate == "" and ds.AccessionNumber == ""
        assert "ImageComments" not in ds and "InstitutionName" not in ds
        assert "PatientBirthTime" not in ds and "ContrastBolusStartTime" not in ds
        assert "PerformedProcedureStepStartTime" not in ds
        assert ds.StudyTime  # Modified Dates option: times kept, dates shifted
        assert not any(e.tag.is_private for e in ds.iterall())
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_uids_remapped_consistently_and_pixels_kept(studies, tmp_path: Path) -> None:
    _export(studies, tmp_path / "export")
    exported = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(p) for p in (tmp_path / "export").rglob("*.dcm"))
    }
    for instances in studies.values():
        series = {
            str(exported[remap_uid(SALT, str(o.SOPInstanceUID))].SeriesInstanceUID)
            for o in instances
        }
        assert len(series) == 1  # one series stays one series
        for original in instances:
            new = exported[remap_uid(SALT, str(original.SOPInstanceUID))]
            assert new.StudyInstanceUID == remap_uid(SALT, str(original.StudyInstanceUID))
            assert new.FrameOfReferenceUID == remap_uid(SALT, str(original.FrameOfReferenceUID))
            assert new.SOPClassUID == original.SOPClassUID  # standard UIDs are kept
            assert np.array_equal(new.pixel_array, original.pixel_array)
        first = exported[remap_uid(SALT, str(instances[0].SOPInstanceUID))]
        assert first.ReferencedImageSequence[0].ReferencedSOPInstanceUID == remap_uid(
            SALT, str(instances[1].SOPInstanceUID)
        )
        assert first.ReferencedImageSequence[0].ReferencedSOPInstanceUID in exported


def _days(a: str, b: str) -> int:
    return (dt.datetime.strptime(b[:8], "%Y%m%d") - dt.datetime.strptime(a[:8], "%Y%m%d")).days


def test_date_shift_is_constant_per_patient(studies, tmp_path: Path) -> None:
    _export(studies, tmp_path / "export")
    shifts: dict[str, set[int]] = {}
    for instances in studies.values():
        for original in instances:
            path = next(
                (tmp_path / "export").rglob(f"{remap_uid(SALT, str(original.SOPInstanceUID))}.dcm")
            )
            new = pydicom.dcmread(path)
            patient = str(new.PatientID)
            found = shifts.setdefault(patient, set())
            for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
                found.add(_days(getattr(original, kw), getattr(new, kw)))
            found.add(
                _days(
                    original.ContributingEquipmentSequence[0].ContributionDateTime,
                    new.ContributingEquipmentSequence[0].ContributionDateTime,
                )
            )
            assert new.StudyTime == original.StudyTime  # times are retained (E.3.6)
    assert len(shifts) == 2  # two patients, two pseudonyms
    assert all(len(s) == 1 for s in shifts.values()), shifts
    assert all(next(iter(s)) <= -365 for s in shifts.values())


def test_split_is_by_patient_and_stable(studies, tmp_path: Path) -> None:
    first = _export(studies, tmp_path / "one")
    again = _export(studies, tmp_path / "two")
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    by_patient: dict[str, set[str]] = {}
    for s in first["studies"]:
        by_patient.setdefault(s["patient"], set()).add(s["split"])
    assert all(len(v) == 1 for v in by_patient.values())
    assert len(by_patient) == 2


def test_burned_in_annotation_is_refused(studies) -> None:
    ds = next(iter(studies.values()))[0].copy()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidError, match="Burned In"):
        Deidentifier(SALT)(ds)
