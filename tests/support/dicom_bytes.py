"""DICOM at the byte level: a Part 10 file's dataset (what travels in a C-STORE), a
hand-made Part 10 file around given dataset bytes, a dataset encoded as given."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom import Dataset, FileMetaDataset
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian


def pydicom_test_file(name: str) -> str:
    """The path of one of pydicom's (pydicom-data's) test files."""
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom has no test file {name}"
    return path


def dataset_bytes(path: Path) -> bytes:
    """The dataset part of a Part 10 file (what travels in a C-STORE)."""
    raw = path.read_bytes()
    f = BytesIO(raw)
    f.seek(132)
    _read_file_meta_info(f)
    return raw[f.tell():]


def part10(body: bytes, sop_class: str, sop_instance: str,
           ts: str = ExplicitVRLittleEndian) -> bytes:
    """A Part 10 file: preamble, file meta (not checked against the standard), ``body``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = UID("1.2.3.4")
    buf = DicomBytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=False)
    return buf.getvalue() + body


def encode(ds: Dataset, implicit: bool = False) -> bytes:
    """``ds`` as little-endian dataset bytes, explicit or implicit VR."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()
