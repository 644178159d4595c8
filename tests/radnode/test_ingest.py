"""Validation of received datasets (PS3.4 B.2.3 statuses) before anything is stored."""

from __future__ import annotations

import copy
import shutil
import zlib
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from radnode_core.index import Index, make_engine
from radnode_core.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    IngestError,
    Ingestor,
    check_structure,
    decode_complete,
    decode_complete_file,
)
from radnode_core.metrics import Metrics
from radnode_core.store import InstanceStore, file_meta_bytes
from tests.support.dicom_bytes import pydicom_test_file

EXPLICIT, IMPLICIT, BIG, DEFLATED = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
)


def encode(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.fixture
def ct(chest_study) -> Dataset:
    return dcmread(chest_study[1][0])


@pytest.mark.parametrize(
    ("ts", "implicit", "little"),
    [(EXPLICIT, False, True), (IMPLICIT, True, True), (BIG, False, False)],
)
def test_complete_datasets_decode_in_each_uncompressed_syntax(ct, ts, implicit, little):
    ds = decode_complete(encode(ct, implicit, little), ts)
    assert ds.SOPInstanceUID == ct.SOPInstanceUID and ds.Rows == 512


def test_deflated_dataset_decodes(ct):
    raw = encode(ct)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(raw) + compressor.flush()
    assert decode_complete(deflated, DEFLATED).SOPInstanceUID == ct.SOPInstanceUID
    with pytest.raises(IngestError) as err:
        decode_complete(deflated[: len(deflated) // 2], DEFLATED)
    assert err.value.status == CANNOT_UNDERSTAND


@pytest.mark.parametrize("cut", [1, 2, 7, 8, 100, 1000, 262144])
def test_any_truncation_is_cannot_understand(ct, cut):
    raw = encode(ct)
    with pytest.raises(IngestError) as err:
        decode_complete(raw[:-cut], EXPLICIT)
    assert err.value.status == CANNOT_UNDERSTAND


def test_truncated_undefined_length_sequence_is_detected(ct):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D3000", "SRT", "Chest"
    ct.AnatomicRegionSequence = Sequence([item])
    ct["AnatomicRegionSequence"].is_undefined_length = True
    del ct.PixelData
    raw = encode(ct)
    assert decode_complete(raw, EXPLICIT).AnatomicRegionSequence[0].CodeValue == "T-D3000"
    with pytest.raises(IngestError):
        decode_complete(raw[:-4], EXPLICIT)


def test_garbage_and_empty_are_refused():
    for raw in (b"", b"\x00" * 3, b"hello world, not dicom at all!!"):
        with pytest.raises(IngestError) as err:
            decode_complete(raw, EXPLICIT)
        assert err.value.status == CANNOT_UNDERSTAND


@pytest.fixture
def ingestor(tmp_path):
    index = Index(f"sqlite:///{tmp_path / 'i.sqlite3'}")
    yield Ingestor(InstanceStore(tmp_path / "data", index), Metrics())
    index.close()


def test_pixel_data_shorter_than_the_image_is_refused(ingestor, ct):
    ct.PixelData = ct.PixelData[:1000]
    with pytest.raises(IngestError) as err:
        ingestor.ingest(encode(ct), EXPLICIT, source="test")
    assert err.value.status == CANNOT_UNDERSTAND


def _spooled(tmp_path: Path, raw: bytes) -> Path:
    path = tmp_path / "in.spool"
    path.write_bytes(b"\0" * 8 + raw)
    return path


def _refusal(ingestor: Ingestor, raw: bytes, spool_dir: Path | None) -> IngestError:
    """The refusal of ``raw`` (explicit VR little endian), validated in memory, or spooled
    in ``spool_dir`` after an 8-byte head."""
    with pytest.raises(IngestError) as err:
        if spool_dir is not None:
            ingestor.validate_file(_spooled(spool_dir, raw), 8, EXPLICIT)
        else:
            ingestor.validate(raw, EXPLICIT)
    return err.value


@pytest.mark.parametrize("spooled", [False, True])
@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("Rows", None),
        ("SamplesPerPixel", None),
        ("BitsAllocated", None),
        ("Columns", [512, 512]),  # two values: not a size
    ],
)
def test_pixel_data_of_an_image_without_its_size_is_refused(
    ingestor, ct, tmp_path, spooled, keyword, value
):
    """The Pixel Data length check reads the image's size from the raw elements: an absent
    or multi-valued one is refused as an incomplete Image Pixel module, read from memory
    or from a spooled file."""
    if value is None:
        delattr(ct, keyword)
    else:
        setattr(ct, keyword, value)
    raw = encode(ct)
    err = _refusal(ingestor, raw, tmp_path if spooled else None)
    assert (err.status, err.reason) == (DATASET_DOES_NOT_MATCH_SOP_CLASS, "image_pixel")


@pytest.mark.parametrize("spooled", [False, True])
@pytest.mark.parametrize(("implicit", "ts"), [(False, EXPLICIT), (True, IMPLICIT)])
def test_pixel_data_length_counts_frames_and_samples(ingestor, ct, tmp_path, spooled, implicit, ts):
    """Two frames of three samples need six times a plain slice's Pixel Data: one slice's
    worth is refused as short, six slices' worth accepted, in either VR encoding."""
    plain = ct.PixelData
    ct.NumberOfFrames = "2"
    ct.SamplesPerPixel = 3
    ct.PixelData = plain * 6
    ct["PixelData"].VR = "OW"
    raw = encode(ct, implicit)
    validate = (
        (lambda data: ingestor.validate_file(_spooled(tmp_path, data), 8, ts))
        if spooled
        else (lambda data: ingestor.validate(data, ts))
    )
    assert validate(raw)["image"]["number_of_frames"] == 2
    ct.PixelData = plain
    with pytest.raises(IngestError) as err:
        validate(encode(ct, implicit))
    assert (err.value.status, err.value.reason) == (CANNOT_UNDERSTAND, "truncated")


@pytest.mark.parametrize(
    "keyword", ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"]
)
def test_missing_uids_do_not_match_sop_class(ingestor, ct, keyword):
    delattr(ct, keyword)
    with pytest.raises(IngestError) as err:
        ingestor.ingest(encode(ct), EXPLICIT, source="test")
    assert err.value.status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert ingestor.store.index.counts()["instances"] == 0


def test_index_failure_is_out_of_resources_and_leaves_no_file(ingestor, ct, tmp_path):
    ingestor.store.index.engine.dispose()
    gone = tmp_path / "gone"
    gone.mkdir()
    ingestor.store.index.engine = make_engine(f"sqlite:///{gone / 'x.db'}")
    shutil.rmtree(gone)  # the database's folder disappears under the running node
    with pytest.raises(IngestError) as err:
        ingestor.ingest(encode(ct), EXPLICIT, source="test")
    assert err.value.status == OUT_OF_RESOURCES
    assert list(ingestor.store.studies_dir.rglob("*.dcm")) == []
    exposition = ingestor.metrics.exposition().decode()
    assert 'radnode_instances_rejected_total{reason="index_failed",source="test"} 1.0' in exposition


def test_metrics_count_received_duplicates_and_rejects(ingestor, ct):
    raw = encode(ct)
    ingestor.ingest(raw, EXPLICIT, source="dimse")
    ingestor.ingest(raw, EXPLICIT, source="dimse")
    with pytest.raises(IngestError):
        ingestor.ingest(raw[:-10], EXPLICIT, source="dimse")
    text = ingestor.metrics.exposition().decode()
    assert 'radnode_instances_received_total{source="dimse"} 1.0' in text
    assert 'radnode_instances_duplicate_total{source="dimse"} 1.0' in text
    assert 'radnode_instances_rejected_total{reason="truncated",source="dimse"} 1.0' in text


def _dataset_part(path: str) -> tuple[bytes, str]:
    """The dataset bytes after a Part 10 file's meta, and its transfer syntax."""
    from io import BytesIO

    from pydicom.filereader import _read_file_meta_info, read_preamble

    data = open(path, "rb").read()
    fp = BytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    return data[fp.tell():], str(meta.TransferSyntaxUID)


@pytest.mark.parametrize("name", ["reportsi.dcm", "UN_sequence.dcm"])
def test_an_undefined_length_sequence_last_is_complete(name):
    """An SR whose undefined-length Content Sequence ends the dataset (a common vendor
    encoding), and an undefined-length UN sequence: well formed, accepted."""
    raw, ts = _dataset_part(pydicom_test_file(name))
    assert len(decode_complete(raw, ts))


def test_a_deflated_stream_padded_to_even_length_is_accepted(ct):
    """pydicom (like other toolkits) pads an odd-length deflated stream with one 0x00."""
    ct = Dataset(ct)
    ct.PixelData = b"\0" * 64
    ct.Rows = ct.Columns = 4
    padded = 0
    for n in range(1, 9):
        ct.PatientName = "X" * n
        body = zlib.compress(encode(ct), 9)[2:-4]  # raw deflate, as PS3.5 A.5
        if len(body) % 2:
            body += b"\0"
            padded += 1
        assert len(decode_complete(body, "1.2.840.10008.1.2.1.99"))
    assert padded  # at least one stream needed the pad
    with pytest.raises(IngestError):  # anything else after the stream is still refused
        decode_complete(body + b"\0\0", "1.2.840.10008.1.2.1.99")


def test_encapsulated_pixel_data_of_an_icon_is_accepted():
    """Encapsulated Pixel Data inside an Icon Image Sequence item (PS3.5 A.4)."""
    import struct

    def item(length: int, value: bytes = b"") -> bytes:
        return struct.pack("<HHI", 0xFFFE, 0xE000, length) + value

    end_seq = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    fragments = item(0) + item(4, b"\xff\xd8\xff\xd9") + end_seq
    pixels = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFFF)
    pixels += fragments
    rows = struct.pack("<HH", 0x0028, 0x0010) + b"US" + struct.pack("<HH", 2, 64)
    icon = struct.pack("<HH", 0x0088, 0x0200) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
    icon += item(0xFFFFFFFF, rows + pixels) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + end_seq
    check_structure(icon + pixels, UID("1.2.840.10008.1.2.4.50"))


# -- spooled datasets (a C-STORE written to a file as it arrived) ----------------------


def _spool(ingestor: Ingestor, raw: bytes, head: bytes = b"") -> tuple[Path, int]:
    path = ingestor.store.tmp_dir / "test.spool"
    path.write_bytes(head + raw)
    return path, len(head)


@pytest.mark.parametrize(
    ("ts", "implicit", "little"),
    [(EXPLICIT, False, True), (IMPLICIT, True, True), (BIG, False, False)],
)
def test_a_spooled_dataset_is_checked_like_its_bytes(ct, tmp_path, ts, implicit, little):
    raw = encode(ct, implicit, little)
    path = tmp_path / "ds.spool"
    path.write_bytes(b"HEAD" + raw)
    ds, pixel_length = decode_complete_file(path, 4, ts)
    assert ds.SOPInstanceUID == ct.SOPInstanceUID and ds.Rows == 512
    assert "PixelData" not in ds and pixel_length == 512 * 512 * 2
    for cut in (1, 8, 1000, 262144):
        path.write_bytes(b"HEAD" + raw[:-cut])
        with pytest.raises(IngestError) as err:
            decode_complete_file(path, 4, ts)
        assert err.value.status == CANNOT_UNDERSTAND


def test_a_spooled_instance_with_its_meta_is_renamed_into_the_store(ingestor, ct):
    raw = encode(ct)
    head = file_meta_bytes(str(ct.SOPClassUID), str(ct.SOPInstanceUID), EXPLICIT, "CT1")
    path, offset = _spool(ingestor, raw, head)
    inode = path.stat().st_ino
    result = ingestor.ingest_file(path, offset, EXPLICIT, source="dimse", calling_aet="CT1")
    assert result.status == 0 and not path.exists()
    (stored,) = ingestor.store.studies_dir.rglob("*.dcm")
    assert stored.stat().st_ino == inode  # renamed, not written again
    assert stored.read_bytes() == head + raw
    assert dcmread(stored).SOPInstanceUID == ct.SOPInstanceUID


def test_a_spooled_instance_without_its_meta_is_written_anew(ingestor, ct):
    raw = encode(ct)
    path, offset = _spool(ingestor, raw, b"\x00" * 132)  # not the meta it needs
    result = ingestor.ingest_file(path, offset, EXPLICIT, source="dimse")
    assert result.status == 0
    (stored,) = ingestor.store.studies_dir.rglob("*.dcm")
    meta = file_meta_bytes(str(ct.SOPClassUID), str(ct.SOPInstanceUID), EXPLICIT, None)
    assert stored.read_bytes() == meta + raw
    path.unlink()  # the caller's


def test_spooled_refusals_have_the_statuses_of_the_bytes(ingestor, ct, tmp_path):
    short, no_uid = copy.deepcopy(ct), copy.deepcopy(ct)
    short.PixelData = ct.PixelData[:1000]
    del no_uid.SeriesInstanceUID
    for ds, status in ((short, CANNOT_UNDERSTAND), (no_uid, DATASET_DOES_NOT_MATCH_SOP_CLASS)):
        path, offset = _spool(ingestor, encode(ds))
        with pytest.raises(IngestError) as err:
            ingestor.ingest_file(path, offset, EXPLICIT, source="dimse")
        assert err.value.status == status
    path, offset = _spool(ingestor, encode(ct))
    with pytest.raises(IngestError) as err:
        ingestor.ingest_file(
            path, offset, EXPLICIT, source="dimse", expected_sop_instance_uid="1.2.3"
        )
    assert err.value.status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    limited = Ingestor(ingestor.store, Metrics(), max_instance_bytes=1000)
    with pytest.raises(IngestError) as err:
        limited.ingest_file(path, offset, EXPLICIT, source="dimse")
    assert err.value.status == OUT_OF_RESOURCES
    assert list(ingestor.store.studies_dir.rglob("*.dcm")) == []


def test_a_spooled_deflated_dataset_is_checked(ingestor, ct):
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(encode(ct)) + compressor.flush()
    path, offset = _spool(ingestor, deflated)
    assert ingestor.ingest_file(path, offset, DEFLATED, source="dimse").status == 0


def _stored(ingestor: Ingestor, sop_instance_uid: str) -> tuple[dict, bytes]:
    row = ingestor.store.index.find_instance(sop_instance_uid)
    assert row is not None
    data = ingestor.store.path_of(row["path"]).read_bytes()
    return {k: v for k, v in row.items() if k not in ("id", "received_at")}, data


def test_a_built_dataset_is_stored_and_indexed_as_ingest_would(tmp_path, ct):
    """ingest_built leaves pydicom's reading of nested sequences lazy: the file, the index
    row and the answer are those ingest makes of the same bytes."""
    ct.PatientName, ct.StudyDescription = "Doe^Jane", "Thorax  "
    raw = encode(ct)
    stored = []
    for n, built in enumerate((False, True)):
        index = Index(f"sqlite:///{tmp_path / f'{n}.sqlite3'}")
        ingestor = Ingestor(InstanceStore(tmp_path / str(n), index), Metrics())
        if built:
            result = ingestor.ingest_built(raw, source="ai", analyze=False)
        else:
            result = ingestor.ingest(raw, EXPLICIT, source="ai", analyze=False)
        stored.append((result, *_stored(ingestor, str(ct.SOPInstanceUID))))
        index.close()
    assert stored[0] == stored[1]


def test_a_built_dataset_is_refused_as_ingest_would_refuse_it(ingestor, ct):
    raw = encode(ct)
    no_uid = copy.deepcopy(ct)
    del no_uid.SeriesInstanceUID
    short = copy.deepcopy(ct)
    short.PixelData = ct.PixelData[:1000]
    cases = (
        (raw[:-10], CANNOT_UNDERSTAND),
        (encode(short), CANNOT_UNDERSTAND),
        (encode(no_uid), DATASET_DOES_NOT_MATCH_SOP_CLASS),
    )
    for body, status in cases:
        with pytest.raises(IngestError) as err:
            ingestor.ingest_built(body, source="ai")
        assert err.value.status == status
    limited = Ingestor(ingestor.store, Metrics(), max_instance_bytes=1000)
    with pytest.raises(IngestError) as err:
        limited.ingest_built(raw, source="ai")
    assert err.value.status == OUT_OF_RESOURCES
    assert list(ingestor.store.studies_dir.rglob("*.dcm")) == []
    assert ingestor.ingest_built(raw, source="ai").status == 0


@pytest.mark.parametrize("spooled", [False, True])
def test_an_image_size_pydicom_cannot_convert_is_refused(ingestor, ct, tmp_path, spooled):
    """A Samples per Pixel of three bytes (US holds two) is refused as an incomplete Image
    Pixel module, not answered as an internal error."""
    raw = encode(ct)
    element = b"\x28\x00\x02\x00US\x02\x00\x01\x00"
    assert raw.count(element) == 1
    raw = raw.replace(element, b"\x28\x00\x02\x00US\x03\x00\x01\x00\x00")
    err = _refusal(ingestor, raw, tmp_path if spooled else None)
    assert (err.status, err.reason) == (DATASET_DOES_NOT_MATCH_SOP_CLASS, "image_pixel")
