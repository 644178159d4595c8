"""Validation of received datasets (PS3.4 B.2.3 statuses) before anything is stored."""

from __future__ import annotations

import zlib

import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from radnode.index import Index, make_engine
from radnode.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    IngestError,
    Ingestor,
    decode_complete,
)
from radnode.metrics import Metrics
from radnode.store import InstanceStore

EXPLICIT, IMPLICIT, BIG, DEFLATED = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"


def encode(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.fixture
def ct(chest_study) -> Dataset:
    return dcmread(chest_study[1][0])


@pytest.mark.parametrize(("ts", "implicit", "little"), [(EXPLICIT, False, True), (IMPLICIT, True, True), (BIG, False, False)])
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


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uids_do_not_match_sop_class(ingestor, ct, keyword):
    delattr(ct, keyword)
    with pytest.raises(IngestError) as err:
        ingestor.ingest(encode(ct), EXPLICIT, source="test")
    assert err.value.status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert ingestor.store.index.counts()["instances"] == 0


def test_index_failure_is_out_of_resources_and_leaves_no_file(ingestor, ct):
    ingestor.store.index.engine.dispose()
    ingestor.store.index.engine = make_engine("sqlite:////nonexistent/dir/x.db")  # database gone
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
