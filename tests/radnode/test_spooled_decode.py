"""A spooled C-STORE dataset is decoded in the same walk that checks its structure: the
dataset, the Pixel Data length and the index fields must be what pydicom's own reader
gives, for every one of pydicom's test files and for hand-made corner cases."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from radnode_core.index import record_fields_from_dataset
from radnode_core.ingest import (
    DEFLATED_DATASET_SYNTAXES,
    IngestError,
    TopLevel,
    _read_file_dataset,
    check_structure,
    decode_complete,
    decode_complete_file,
)

# The test files that come with pydicom itself: nothing is downloaded.
TEST_FILES = sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))


def _spooled(tmp_path: Path, source: Path) -> tuple[Path, int, str] | None:
    """The file as radnode's spool holds a C-STORE: a meta group, then the dataset."""
    raw = source.read_bytes()
    f = BytesIO(raw)
    try:
        f.seek(132)
        if raw[128:132] != b"DICM":
            return None
        meta = _read_file_meta_info(f)
        ts = str(meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001 - not a Part 10 file with a usable meta group
        return None
    if ts in DEFLATED_DATASET_SYNTAXES or not UID(ts).is_transfer_syntax:
        return None
    spool = tmp_path / f"{source.stem}.spool"
    spool.write_bytes(raw)
    return spool, f.tell(), ts


def _pydicom(spool: Path, offset: int, ts: str) -> tuple[Dataset, int | None]:
    with spool.open("rb") as fp:
        return _read_file_dataset(fp, offset, UID(ts))


def _same(ours: Dataset, theirs: Dataset) -> None:
    assert list(ours.keys()) == list(theirs.keys())
    assert ours.original_encoding == theirs.original_encoding
    assert ours.original_character_set == theirs.original_character_set
    for tag in theirs.keys():
        mine, other = ours.get_item(tag), theirs.get_item(tag)
        if isinstance(mine, RawDataElement) and isinstance(other, RawDataElement):
            assert mine._replace(value_tell=0) == other._replace(value_tell=0), tag
        assert ours[tag].VR == theirs[tag].VR, tag
        assert ours[tag].value == theirs[tag].value, tag


@pytest.mark.parametrize("source", TEST_FILES, ids=lambda p: p.name)
def test_the_walk_reads_what_pydicom_reads(tmp_path: Path, source: Path) -> None:
    spooled = _spooled(tmp_path, source)
    if spooled is None:
        pytest.skip("not a Part 10 file radnode would receive as it is")
    spool, offset, ts = spooled
    try:
        theirs, their_pixels = _pydicom(spool, offset, ts)
    except IngestError:
        with pytest.raises(IngestError):
            decode_complete_file(spool, offset, ts)
        return
    view = memoryview(spool.read_bytes())[offset:]
    top = TopLevel(UID(ts))
    try:
        check_structure(view, UID(ts), top)
    except IngestError:
        return  # refused for its structure either way: decode_complete_file walks first
    ours, our_pixels = decode_complete_file(spool, offset, ts)
    _same(ours, theirs)
    assert our_pixels == their_pixels
    if top.complete:  # the walk's own elements, not a fall-back to pydicom's reader
        _same(top.dataset(), theirs)
        assert top.pixel_length == their_pixels
    try:
        their_fields = record_fields_from_dataset(theirs, ts, "MOD")
    except Exception as exc:  # noqa: BLE001 - the same refusal is expected of ours
        with pytest.raises(type(exc)):
            record_fields_from_dataset(ours, ts, "MOD")
        return
    assert record_fields_from_dataset(ours, ts, "MOD") == their_fields


def test_most_test_files_take_the_walk_not_pydicoms_reader(tmp_path: Path) -> None:
    """The corpus has defined-length headers in every syntax; were the walk never used, the
    comparison above would compare pydicom with itself."""
    walked = []
    for source in TEST_FILES:
        spooled = _spooled(tmp_path, source)
        if spooled is None:
            continue
        spool, offset, ts = spooled
        top = TopLevel(UID(ts))
        try:
            check_structure(memoryview(spool.read_bytes())[offset:], UID(ts), top)
        except IngestError:
            continue
        if top.complete and top.elements:
            walked.append(UID(ts).name)
    assert len(walked) >= 30
    assert {"Implicit VR Little Endian", "Explicit VR Little Endian"} <= set(walked)
    assert "Explicit VR Big Endian" in walked


def _ct(**extra) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = ""
    ds.Modality = "CT"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 3
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = 16
    ds.SamplesPerPixel = 1
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.PixelData = b"\x00" * 8
    return ds


def encoded(ds: Dataset, ts: str) -> bytes:
    syntax = UID(ts)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
    write_dataset(fp, ds)
    return fp.getvalue()


def _item(**values) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


@pytest.mark.parametrize(
    "ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
)
@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "defined-length sequence",
        "undefined-length sequence",
        "float pixel data first",
        "large value",
    ],
)
def test_corner_cases_read_as_pydicom_reads_them(tmp_path: Path, ts: str, case: str) -> None:
    if case == "plain":
        ds = _ct()
    elif case in ("defined-length sequence", "undefined-length sequence"):
        ds = _ct(ReferencedImageSequence=Sequence([_item(ReferencedSOPInstanceUID="1.2.3")]))
        ds["ReferencedImageSequence"].is_undefined_length = case.startswith("undefined")
    elif case == "float pixel data first":
        ds = _ct()
        ds.FloatPixelData = b"\x00\x00\x80\x3f" * 4
    else:
        ds = _ct(ImageComments="x" * (1024 * 1024 + 2))
    body = encoded(ds, ts)
    spool = tmp_path / "c.spool"
    spool.write_bytes(b"\x00" * 10 + body)
    theirs, their_pixels = _pydicom(spool, 10, ts)
    ours, our_pixels = decode_complete_file(spool, 10, ts)
    _same(ours, theirs)
    assert our_pixels == their_pixels
    if case == "plain":
        assert our_pixels == 8
        assert str(ours.PatientName) == "Müller^Jürgen"
    if case == "float pixel data first":
        assert our_pixels is None  # reading stops at Float Pixel Data, as pydicom's does
    top = TopLevel(UID(ts))
    check_structure(memoryview(body), UID(ts), top)
    assert top.complete is (case not in ("undefined-length sequence", "large value"))
    assert record_fields_from_dataset(ours, ts, "MOD") == record_fields_from_dataset(
        theirs, ts, "MOD"
    )
    assert dcmread(BytesIO(body), force=True) is not None


def _explicit_element(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


_UIDS = _explicit_element(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\x00") + _explicit_element(
    0x00080018, b"UI", b"1.2.3.4.5\x00"
)


@pytest.mark.parametrize(
    "charset",
    [
        _explicit_element(0x00080005, b"US", b"\x01\x00"),
        _explicit_element(0x00080005, b"AT", b"\x08\x00\x05\x00"),
        _explicit_element(0x00080005, b"CS", b"ISO_IR\x00100 "),
    ],
    ids=["US", "AT", "NUL"],
)
def test_a_specific_character_set_that_does_not_convert_cannot_be_understood(
    tmp_path: Path, charset: bytes
) -> None:
    """Refused as the reader's failure was: 0xC000, not an error the handler would answer
    with a transient 0xA700."""
    spool = tmp_path / "c.spool"
    spool.write_bytes(charset + _UIDS)
    with pytest.raises(IngestError) as ours:
        decode_complete_file(spool, 0, ExplicitVRLittleEndian)
    assert ours.value.status == 0xC000
    with pytest.raises(IngestError) as theirs:
        _pydicom(spool, 0, ExplicitVRLittleEndian)
    assert theirs.value.status == 0xC000


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
@pytest.mark.parametrize("cut", ["a value before Pixel Data", "Pixel Data"])
def test_a_cut_dataset_is_truncated_whichever_way_it_is_decoded(
    tmp_path: Path, ts: str, cut: str
) -> None:
    body = encoded(_ct(), ts)
    end = body.index(b"M\xc3\xbcller") + 4 if cut.startswith("a value") else len(body) - 3
    spool = tmp_path / "c.spool"
    spool.write_bytes(body[:end])
    with pytest.raises(IngestError) as spooled:
        decode_complete_file(spool, 0, ts)
    with pytest.raises(IngestError) as in_memory:
        decode_complete(body[:end], ts)
    assert (spooled.value.status, spooled.value.reason) == (0xC000, "truncated")
    assert (in_memory.value.status, in_memory.value.reason) == (0xC000, "truncated")


def test_implicit_vr_that_the_reader_takes_for_explicit_is_read_as_the_reader_reads_it(
    tmp_path: Path,
) -> None:
    """A first value 0x4141 bytes long reads as the VR "AA": pydicom's reader switches to
    explicit VR, and a dataset the reader misreads must not be stored as if it read well."""
    first = struct.pack("<HHI", 0x0008, 0x0001, 0x4141) + b"A" * 0x4141
    rest = encoded(_ct(), ImplicitVRLittleEndian)
    spool = tmp_path / "c.spool"
    spool.write_bytes(first + rest)
    try:
        theirs, their_pixels = _pydicom(spool, 0, ImplicitVRLittleEndian)
    except IngestError as exc:
        with pytest.raises(IngestError) as refused:
            decode_complete_file(spool, 0, ImplicitVRLittleEndian)
        assert refused.value.status == exc.status
        return
    ours, our_pixels = decode_complete_file(spool, 0, ImplicitVRLittleEndian)
    _same(ours, theirs)
    assert our_pixels == their_pixels
