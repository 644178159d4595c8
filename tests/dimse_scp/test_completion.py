"""A study is complete at association release, or after the quiet period, whichever comes first."""

from __future__ import annotations

import sqlite3
import time

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config

from tests.support.radnode_process import RadnodeProcess
from tests.support.scu_raw import association
from tests.support.wait import wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"


def _jobs(data_dir):
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        return db.execute("select version, reason from jobs order by id").fetchall()


def test_quiet_period_completes_a_study_while_the_association_stays_open(tmp_path, chest_study):
    _study, files = chest_study
    node = RadnodeProcess(tmp_path / "data", "scp", "--quiet-period", "1.0").start()
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with association(node.dicom_port, [(CT, ExplicitVRLittleEndian)], aet="MODALITY") as assoc:
            for path in files[:5]:
                assert assoc.send_c_store(path).Status == 0
            assert _jobs(node.data_dir) == []
            started = time.monotonic()
            wait_for(lambda: _jobs(node.data_dir), timeout=5, what="the quiet-period job",
                     interval=0.05)
            waited = time.monotonic() - started
            assert _jobs(node.data_dir) == [(5, "quiet")]
            assert 0.9 <= waited < 3.0
            # More instances for the study on the same association: a new version at release.
            for path in files[5:8]:
                assert assoc.send_c_store(path).Status == 0
        wait_for(lambda: len(_jobs(node.data_dir)) >= 2, timeout=5, what="the release's job",
                 interval=0.05)
        assert _jobs(node.data_dir) == [(5, "quiet"), (8, "released")]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        node.stop()


def test_aborted_association_leaves_completion_to_the_quiet_period(tmp_path, chest_study):
    _study, files = chest_study
    node = RadnodeProcess(tmp_path / "data", "scp", "--quiet-period", "0.5").start()
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with association(node.dicom_port, [(CT, ExplicitVRLittleEndian)]) as assoc:
            for path in files[:3]:
                assert assoc.send_c_store(path).Status == 0
            assoc.abort()
        wait_for(lambda: _jobs(node.data_dir), timeout=5, what="the quiet-period job",
                 interval=0.05)
        assert _jobs(node.data_dir) == [(3, "quiet")]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        node.stop()
