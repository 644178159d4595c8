"""The instance store: atomic writes, duplicate policies, recovery after a crash."""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, Comprehensive3DSRStorage, ExplicitVRLittleEndian, generate_uid

from radnode_core import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from radnode_core import store as store_module
from radnode_core.index import Index, record_fields_from_dataset
from radnode_core.store import (
    CLEAN_SHUTDOWN_MARKER,
    ZERO_PREAMBLE,
    InstanceStore,
    file_meta_bytes,
)
from radnode_core.uids import InvalidUID, check_uid


def _split(path: Path) -> tuple[bytes, str]:
    raw = path.read_bytes()
    f = BytesIO(raw)
    f.seek(132)
    meta = _read_file_meta_info(f)
    return raw[f.tell():], str(meta.TransferSyntaxUID)


@pytest.fixture
def store(tmp_path):
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    yield InstanceStore(tmp_path / "data", index)
    index.close()


def _store_file(store: InstanceStore, path: Path, **kw):
    body, ts = _split(path)
    ds = dcmread(path, stop_before_pixels=True)
    fields = record_fields_from_dataset(ds, ts, "MOD")
    meta = file_meta_bytes(fields["sop_class_uid"], fields["sop_instance_uid"], ts, "MOD")
    return store.store(body, meta, fields), body


@pytest.mark.parametrize(
    "bad",
    ["", "../etc", "1.2/3", "1..2", ".1.2", "1.2.", "1" * 65, "1.2.3\\4", "1.2 .3", "é", None],
)
def test_check_uid_refuses_what_is_not_a_uid(bad):
    with pytest.raises(InvalidUID):
        check_uid(bad, "UID")


def test_check_uid_accepts_uids_and_strips_padding():
    assert check_uid("1.2.840.10008.1.2\x00", "UID") == "1.2.840.10008.1.2"
    assert check_uid("1.02.3", "UID") == "1.02.3"  # leading zeros seen in the wild


def test_store_writes_meta_plus_bytes_as_received_and_indexes(store, chest_study):
    _study, files = chest_study
    result, body = _store_file(store, files[0])
    assert not result.duplicate
    path = store.path_of(result.record.path)
    assert _split(path)[0] == body
    assert path.read_bytes()[:132] == b"\0" * 128 + b"DICM"
    assert store.index.counts()["instances"] == 1
    assert not any(store.tmp_dir.iterdir())


def test_duplicate_keep_first_keeps_bytes_and_counts(store, chest_study):
    _study, files = chest_study
    first, _ = _store_file(store, files[1])
    path = store.path_of(first.record.path)
    before = path.stat().st_mtime_ns
    again, _ = _store_file(store, files[1])
    assert again.duplicate and path.stat().st_mtime_ns == before
    assert store.index.find_instance(first.record.sop_instance_uid)["duplicates"] == 1


def test_path_of_refuses_escapes(store):
    with pytest.raises(InvalidUID):
        store.path_of("../outside.dcm")


def test_write_failure_leaves_nothing(store, chest_study, monkeypatch):
    _study, files = chest_study
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        _store_file(store, files[2])
    monkeypatch.setattr(os, "replace", real_replace)
    assert not any(store.tmp_dir.iterdir())
    assert not list(store.studies_dir.rglob("*.dcm"))
    assert store.index.counts()["instances"] == 0


def test_recovery_after_unclean_stop_removes_temp_files_and_indexes_orphans(tmp_path, chest_study):
    _study, files = chest_study
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "data", index)
    store.recover()
    result, _ = _store_file(store, files[3])
    # A crash between rename and index commit: a complete file the index lacks ...
    ds = dcmread(files[4], stop_before_pixels=True)
    orphan = store.path_of(
        store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    )
    orphan.write_bytes(files[4].read_bytes())
    # ... a garbage file where an instance would be, and a dead process's temp file.
    junk = store.studies_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID / "1.2.3.dcm"
    junk.write_bytes(b"not dicom")
    dead = store.tmp_root / "somehost.999999"
    dead.mkdir()
    (dead / "x.part").write_bytes(b"partial")
    os.utime(dead, (0, 0))
    index.close()

    index = Index(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "data", index)
    assert not store.was_clean_shutdown()
    stats = store.recover()
    assert stats == {"temp_removed": 1, "indexed": 1, "removed": 1}
    assert not dead.exists() and not junk.exists()
    assert index.counts()["instances"] == 2
    assert index.find_instance(ds.SOPInstanceUID) is not None
    assert index.find_instance(result.record.sop_instance_uid) is not None
    store.mark_clean_shutdown()
    assert (store.data_dir / CLEAN_SHUTDOWN_MARKER).exists()
    # After a clean stop, no scan is needed.
    store2 = InstanceStore(tmp_path / "data", index)
    assert store2.recover() == {"temp_removed": 0, "indexed": 0, "removed": 0}
    index.close()


def _received_seq(index: Index, study_uid: str) -> object:
    study = index.get_study(study_uid)
    assert study is not None, f"no study {study_uid}"
    return study["received_seq"]


def test_an_orphaned_sr_does_not_make_its_study_due_again(tmp_path, chest_study):
    """A crash between an SR's rename and its index commit: reconcile indexes the SR
    without bumping the study (else the study is analysed again and gets a second SR)."""
    _study, files = chest_study
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "data", index)
    result, _ = _store_file(store, files[0])
    study_uid = result.record.study_uid
    seq = _received_seq(index, study_uid)

    sr = Dataset()
    sr.SOPClassUID = Comprehensive3DSRStorage
    sr.SOPInstanceUID = generate_uid()
    sr.StudyInstanceUID = study_uid
    sr.SeriesInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    orphan = store.path_of(
        store.relative_path(study_uid, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    )
    orphan.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(orphan, enforce_file_format=True)

    assert store.reconcile() == (1, 0)
    assert index.find_instance(sr.SOPInstanceUID) is not None
    assert _received_seq(index, study_uid) == seq
    index.close()


def _pydicom_file_meta(sop_class: str, sop_instance: str, syntax: str, aet: str | None) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if aet:
        meta.SourceApplicationEntityTitle = aet
    buf = BytesIO()
    buf.write(ZERO_PREAMBLE + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax", "aet"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", ExplicitVRLittleEndian, "CT1"),
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2", "MODALITY"),
        (Comprehensive3DSRStorage, "1." + "2" * 62, "1.2.840.10008.1.2.4.50", None),
        ("1.2", "1.23", ExplicitVRLittleEndian, "ABCDEFGHIJKLMNOP"),
    ],
)
def test_file_meta_is_what_pydicom_writes(sop_class, sop_instance, syntax, aet):
    """The File Meta Information group is encoded by hand (it is built twice per C-STORE);
    it must be byte for byte pydicom's, and read back as written."""
    encoded = file_meta_bytes(sop_class, sop_instance, syntax, aet)
    assert encoded == _pydicom_file_meta(sop_class, sop_instance, syntax, aet)
    f = BytesIO(encoded)
    f.seek(132)
    meta = _read_file_meta_info(f)
    assert (meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID) == (sop_instance, syntax)
    assert f.tell() == len(encoded)


@pytest.mark.parametrize(
    "args",
    [
        ("1.2", "1." + "2" * 64, ExplicitVRLittleEndian, None),
        ("1.2", "1.2.é", ExplicitVRLittleEndian, None),
        ("1.2", "1.2", ExplicitVRLittleEndian, "A\\B"),
        ("1.2", "1.2", ExplicitVRLittleEndian, "SEVENTEEN_LETTERS"),
    ],
)
def test_file_meta_refuses_values_the_group_cannot_hold(args):
    with pytest.raises(ValueError):
        file_meta_bytes(*args)


def _spool_file(store: InstanceStore, path: Path, head: bytes) -> tuple[Path, bytes, dict]:
    """``path``'s dataset as a spooled C-STORE holds it: ``head``, then the dataset."""
    body, ts = _split(path)
    ds = dcmread(path, stop_before_pixels=True)
    fields = record_fields_from_dataset(ds, ts, "MOD")
    spool = store.tmp_dir / "in.spool"
    spool.write_bytes(head + body)
    return spool, body, fields


def test_store_file_renames_a_spool_whose_written_head_is_the_meta(store, chest_study):
    """Told what the spool starts with and its size, the store renames the spool itself into
    place (the same file, not a copy) and indexes the size it was told."""
    _study, files = chest_study
    _body, ts = _split(files[0])
    ds = dcmread(files[0], stop_before_pixels=True)
    meta = file_meta_bytes(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, "MOD")
    spool, body, fields = _spool_file(store, files[0], meta)
    inode = spool.stat().st_ino
    result = store.store_file(spool, len(meta), meta, fields, written=(meta, len(meta) + len(body)))
    final = store.path_of(result.record.path)
    assert not spool.exists() and final.stat().st_ino == inode
    assert final.read_bytes() == meta + body
    assert result.record.size == len(meta) + len(body) == final.stat().st_size
    assert store.index.find_instance(fields["sop_instance_uid"])["size"] == len(meta) + len(body)


def test_store_file_writes_anew_when_the_written_head_differs(store, chest_study):
    """A spool whose head is not the instance's File Meta Information (another source AE
    title) is written anew behind the right one; the spool stays for its owner to remove."""
    _study, files = chest_study
    _body, ts = _split(files[1])
    ds = dcmread(files[1], stop_before_pixels=True)
    head = file_meta_bytes(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, "OTHER")
    meta = file_meta_bytes(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, "MOD")
    spool, body, fields = _spool_file(store, files[1], head)
    result = store.store_file(spool, len(head), meta, fields, written=(head, len(head) + len(body)))
    final = store.path_of(result.record.path)
    assert spool.exists() and final.read_bytes() == meta + body
    assert result.record.size == len(meta) + len(body)


def _recording_folder_syncs(
    monkeypatch: pytest.MonkeyPatch, fail: Path | None = None
) -> list[Path]:
    """The folders the store fsyncs, in order (each still really fsynced); ``fail``: the
    folder whose fsync fails with EIO, as a failing disk's would."""
    synced: list[Path] = []
    real = store_module._fsync_dir

    def fsync_dir(path: Path) -> None:
        if fail is not None and Path(path) == fail:
            raise OSError(5, "Input/output error")
        real(path)
        synced.append(Path(path))

    monkeypatch.setattr(store_module, "_fsync_dir", fsync_dir)
    return synced


def test_the_first_file_in_a_series_folder_made_elsewhere_syncs_its_parents(
    store, chest_study, monkeypatch
):
    """Another process (or a crashed run) made the study and series folders and may never
    have synced their entries: the first instance placed in the series syncs the study
    folder and the studies folder as well as the series; the next ones the series only."""
    _study, files = chest_study
    ds = dcmread(files[0], stop_before_pixels=True)
    series = store.studies_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID
    series.mkdir(parents=True)  # no fsync, as a process killed after its mkdir leaves it
    synced = _recording_folder_syncs(monkeypatch)
    _store_file(store, files[0])
    assert synced == [series, series.parent, store.studies_dir]
    synced.clear()
    _store_file(store, files[1])
    assert synced == [series]


def test_a_file_whose_folder_sync_fails_is_removed_and_not_indexed(
    store, chest_study, monkeypatch
):
    _study, files = chest_study
    ds = dcmread(files[0], stop_before_pixels=True)
    series = store.studies_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID
    _recording_folder_syncs(monkeypatch, fail=series)
    with pytest.raises(OSError, match="Input/output error"):
        _store_file(store, files[0])
    assert not list(store.studies_dir.rglob("*.dcm"))
    assert not any(store.tmp_dir.iterdir())
    assert store.index.counts()["instances"] == 0
