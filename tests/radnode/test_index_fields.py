"""The index reads values still raw from the file with pydicom's value converter: the
fields it records are the ones pydicom's full element conversion gives, whatever the
character set, the transfer syntax, or a value that is empty, repeated, bent or
declared with another VR."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom import Dataset, config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from radnode_core.index import record_fields_from_dataset
from radnode_core.ingest import decode_complete

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"


def _dataset(charset: str | list[str] | None, **values: object) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated = 16
    request = Dataset()
    request.ScheduledProcedureStepID = "SPS 1"
    request.RequestedProcedureID = "RP 7"
    ds.RequestAttributesSequence = [request]
    with config.disable_value_validation():
        for keyword, value in values.items():
            if isinstance(value, tuple):  # (VR, value): as given, whatever the dictionary says
                ds[keyword] = DataElement(keyword, *value)
            else:
                setattr(ds, keyword, value)
    return ds


def _encoded(ds: Dataset, ts: str) -> bytes:
    buf = DicomBytesIO()
    buf.is_implicit_VR = ts == IMPLICIT
    buf.is_little_endian = ts != BIG_ENDIAN
    with config.disable_value_validation():
        write_dataset(buf, ds)
    return buf.getvalue()


CASES: dict[str, tuple[str | list[str] | None, dict[str, Any]]] = {
    "ascii": (None, {"PatientName": "Doe^John", "PatientID": "ID 1", "StudyDate": "20240102"}),
    "utf-8": (
        "ISO_IR 192",
        {"PatientName": "Müller^Jürgen=山田^太郎", "StudyDescription": "Thorax"},
    ),
    "latin-1": ("ISO_IR 100", {"PatientName": "Gérard^Loïc", "ReferringPhysicianName": "Dr^Ä"}),
    "iso 2022 japanese": (
        ["", "ISO 2022 IR 87"],
        {"PatientName": "Yamada^Tarou=山田^太郎", "PatientID": "J1"},
    ),
    "empty and padded": (None, {"PatientName": "", "PatientID": "  X1 ", "AccessionNumber": ""}),
    "repeated values": (None, {"PatientSex": ("CS", ["M", "F"]), "BodyPartExamined": "CHEST"}),
    "bent numbers": (
        None,
        # An Instance Number of "abc", which pydicom will not build: its bytes are put
        # in place of "864209" once encoded.
        {"InstanceNumber": "864209", "SeriesNumber": ("IS", "9" * 12)},
    ),
    "number in range": (
        None,
        {"InstanceNumber": "42", "SeriesNumber": " 3 ", "NumberOfFrames": "1"},
    ),
    "declared as UN": (None, {"PatientName": ("UN", b"Doe^Jane"), "Modality": ("UN", b"MR")}),
    "long values": (None, {"StudyDescription": "x" * 200, "PatientID": "y" * 80}),
}


def _convert(ds: Dataset) -> None:
    """Every element through pydicom's own conversion (one it cannot convert, such as an
    IS of "abc", stays raw: both ways then ask pydicom, which raises)."""
    for tag in list(ds.keys()):
        try:
            with config.disable_value_validation():
                elem = ds[tag]
        except ValueError:
            continue
        if elem.VR == "SQ":
            for item in elem.value:
                _convert(item)


@pytest.mark.parametrize("ts", [EXPLICIT, IMPLICIT, BIG_ENDIAN])
@pytest.mark.parametrize("case", CASES)
def test_fields_read_raw_are_what_pydicom_converts(case: str, ts: str) -> None:
    charset, values = CASES[case]
    raw = _encoded(_dataset(charset, **values), ts).replace(b"864209", b"abc   ")
    fast = decode_complete(raw, ts)
    assert any(isinstance(e, RawDataElement) for e in fast._dict.values())
    converted = decode_complete(raw, ts)
    _convert(converted)
    assert record_fields_from_dataset(fast, ts, "AE") == record_fields_from_dataset(
        converted, ts, "AE"
    )
