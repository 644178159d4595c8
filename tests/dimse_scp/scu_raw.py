"""Send hand-made (often broken) C-STORE payloads with pynetdicom, bytes as given."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification


def part10(body: bytes, sop_class: str, sop_instance: str, ts: str = ExplicitVRLittleEndian) -> bytes:
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
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


@contextmanager
def association(port: int, contexts: list[tuple[str, str]], aet: str = "TESTSCU",
                called: str = "RADNODE") -> Iterator[object]:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def send_raw_files(port: int, files: list[Path], contexts: list[tuple[str, str]], **kw: str) -> list[int]:
    """C-STORE each Part 10 file's dataset bytes exactly as they are in the file."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with association(port, contexts, **kw) as assoc:
            assert assoc.is_established, "association not established"
            statuses = []
            for path in files:
                rsp = assoc.send_c_store(path)
                statuses.append(int(rsp.Status) if "Status" in rsp else -1)
            echo = assoc.send_c_echo()
            assert echo.Status == 0x0000  # the association is still healthy
            return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
