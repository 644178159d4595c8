"""DICOM at the byte level: a Part 10 file's dataset (what travels in a C-STORE), a
hand-made Part 10 file around given dataset bytes, a dataset encoded as given."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian


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
    meta = Dataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.3.4"
    buf = BytesIO()
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
