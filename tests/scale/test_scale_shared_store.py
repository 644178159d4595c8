"""Several processes on one data dir: one's start-up clean-up never breaks another's writes."""

from __future__ import annotations

import os
import socket
import time

from pydicom import dcmread

from ai_node.synth import StudySpec, write_study
from radnode_core.index import Index, record_fields_from_dataset
from radnode_core.store import InstanceStore, file_meta_bytes
from tests.support.dicom_bytes import dataset_bytes


def test_a_quiet_receiver_still_stores_after_another_pod_cleaned_up_old_temp_folders(
    tmp_path, monkeypatch
):
    data = tmp_path / "shared"
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    quiet = InstanceStore(data, index)  # a receiver on pod A with nothing to do for days
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(quiet.tmp_dir, (two_days_ago, two_days_ago))
    # Pod B (another host name) starts and removes temp folders it takes for abandoned.
    monkeypatch.setattr(socket, "gethostname", lambda: "radnode-scp-other-pod")
    InstanceStore(data, index).recover()
    monkeypatch.undo()

    spec = StudySpec(region="chest", slices=1, rows=32, columns=32)
    _, [path] = write_study(spec, tmp_path / "in")
    ds = dcmread(path, stop_before_pixels=True)
    fields = record_fields_from_dataset(ds, ds.file_meta.TransferSyntaxUID, "CT01")
    syntax = ds.file_meta.TransferSyntaxUID
    meta = file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, syntax, "CT01")
    result = quiet.store(dataset_bytes(path), meta, fields)  # must not fail with ENOENT
    assert not result.duplicate
    assert index.find_instance(str(ds.SOPInstanceUID)) is not None
    assert (data / result.record.path).is_file()
    index.close()
