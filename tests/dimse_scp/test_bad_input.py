"""Bad input gets its PS3.4 status, leaves nothing behind, and the SCP keeps serving."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from tests.support.dicom_bytes import encode, part10
from tests.support.radnode_process import RadnodeProcess
from tests.support.scu_raw import send_raw_files
from tests.support.tools import storescu

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def _files_on_disk(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "studies").rglob("*") if p.is_file())


def _temp_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "tmp").rglob("*") if p.is_file())


def _indexed(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        return int(db.execute("select count(*) from instances").fetchone()[0])


@pytest.fixture
def slice_ds(chest_study):
    _study, files = chest_study
    return dcmread(files[0])


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_each_kind_of_bad_instance_gets_its_status_and_nothing_is_stored(
    radnode_scp: RadnodeProcess, slice_ds, tmp_path
):
    good = encode(slice_ds)
    uid = slice_ds.SOPInstanceUID

    no_sop_uid = slice_ds.copy()
    del no_sop_uid.SOPInstanceUID
    traversal = slice_ds.copy()
    traversal.StudyInstanceUID = "../../../../tmp/evil"
    traversal_sop = slice_ds.copy()
    traversal_sop.SOPInstanceUID = "1.2.3/../../x"
    wrong_class = slice_ds.copy()
    wrong_class.SOPClassUID = MR

    cases = {
        "truncated.dcm": (part10(good[: len(good) // 2], CT, uid), 0xC000),
        "truncated_header.dcm": (part10(good + b"\x28\x00\x10", CT, uid), 0xC000),
        "no_sop_instance_uid.dcm": (part10(encode(no_sop_uid), CT, uid), 0xA900),
        "uid_traversal.dcm": (part10(encode(traversal), CT, uid), 0xA900),
        "sop_uid_traversal.dcm": (part10(encode(traversal_sop), CT, "1.2.3"), 0xA900),
        "wrong_sop_class.dcm": (part10(encode(wrong_class), CT, uid), 0xA900),
        "not_matching_request_uid.dcm": (part10(good, CT, "1.2.3.4.5"), 0xA900),
    }
    files = [_write(tmp_path, name, data) for name, (data, _) in cases.items()]
    statuses = send_raw_files(radnode_scp.dicom_port, files, [(CT, ExplicitVRLittleEndian)])
    expected = {name: status for name, (_, status) in cases.items()}
    assert dict(zip(cases, statuses, strict=True)) == expected

    assert _files_on_disk(radnode_scp.data_dir) == []
    assert _temp_files(radnode_scp.data_dir) == []
    assert _indexed(radnode_scp.data_dir) == 0
    assert not list(Path("/tmp").glob("evil*"))
    # ... and the next association is served normally.
    ok = _write(tmp_path, "ok.dcm", part10(good, CT, uid))
    assert send_raw_files(radnode_scp.dicom_port, [ok], [(CT, ExplicitVRLittleEndian)]) == [0x0000]
    assert _indexed(radnode_scp.data_dir) == 1
    log = radnode_scp.log()
    assert "instance refused" in log and "0xA900" in log
    assert str(slice_ds.PatientName) not in log  # no patient names in ordinary logs


def test_unknown_calling_aet_is_rejected_and_nothing_stored(tmp_path, chest_study):
    _study, files = chest_study
    node = RadnodeProcess(
        tmp_path / "data", "scp", "--allow", "CT_SCANNER@127.0.0.1", "--allow", "PACS"
    ).start()
    try:
        rejected = storescu(node.dicom_port, files[:3], aet="INTRUDER")
        assert rejected.returncode != 0
        assert "Association Rejected" in rejected.stderr or "rejected" in rejected.stderr.lower()
        wrong_called = storescu(node.dicom_port, files[:3], aet="CT_SCANNER", called="SOMEONE")
        assert wrong_called.returncode != 0
        assert _files_on_disk(node.data_dir) == []
        # pynetdicom sees the PS3.8 reason: rejected-permanent, calling AE not recognized.
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="RADNODE")
        assert assoc.is_rejected and not assoc.is_established
        rj = assoc.acceptor.primitive
        assert rj is not None
        assert (rj.result, rj.diagnostic) == (0x01, 0x03)
        # An allowed AE from an allowed host is served; so is one allowed from any host.
        assert storescu(node.dicom_port, files[:3], aet="CT_SCANNER").returncode == 0
        assert storescu(node.dicom_port, files[3:5], aet="PACS").returncode == 0
        assert _indexed(node.data_dir) == 5
        assert "association rejected" in node.log()
    finally:
        node.stop()


def test_min_free_space_refuses_with_out_of_resources(tmp_path, chest_study):
    _study, files = chest_study
    node = RadnodeProcess(
        tmp_path / "data", "scp", env={"RADNODE_MIN_FREE_BYTES": str(2**62)}
    ).start()
    try:
        result = storescu(node.dicom_port, files[:1], "-v")
        assert "Refused: OutOfResources" in result.stderr, result.stderr
        assert _files_on_disk(node.data_dir) == [] and _temp_files(node.data_dir) == []
        assert _indexed(node.data_dir) == 0
    finally:
        node.stop()


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """A real 12 MiB tmpfs: writes fail with ENOSPC when it is full."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_answers_out_of_resources_without_partial_files(
    small_filesystem: Path, chest_study, tmp_path
):
    _study, files = chest_study
    node = RadnodeProcess(small_filesystem / "data", "scp", env={"RADNODE_MIN_FREE_BYTES": "0"})
    node.log_path = tmp_path / "scp.log"
    node.start()
    try:
        result = storescu(node.dicom_port, files[:40], "-v", "--no-halt")
        out = result.stderr
        assert "Refused: OutOfResources" in out, out[-2000:]
        stored = _files_on_disk(node.data_dir)
        assert 0 < len(stored) < 40
        assert _temp_files(node.data_dir) == []
        assert _indexed(node.data_dir) == len(stored)
        for path in stored:  # every stored file is complete
            assert dcmread(path).pixel_array.shape == (512, 512)
        # Still serving: an echo works.
        echo = subprocess.run(["echoscu", "-aec", "RADNODE", "127.0.0.1", str(node.dicom_port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
    finally:
        node.stop()
