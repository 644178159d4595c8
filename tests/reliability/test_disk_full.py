"""A full filesystem (a real 12 MiB tmpfs): 0xA700 on both edges, nothing partial, and
storing resumes without a restart once space is freed."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import httpx
from pydicom import dcmread

from tests.support.dicom_bytes import dataset_bytes
from tests.support.radnode_process import RadnodeProcess
from tests.support.reliability import acknowledged, assert_store_consistent, record
from tests.support.tools import storescu

OUT_OF_RESOURCES = 0xA700


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _leave_free(mount: Path, filler: Path, wanted: int) -> int:
    """Resize a filler file so that about ``wanted`` bytes stay free; returns what is free."""
    filler.unlink(missing_ok=True)
    size = max(0, _free(mount) - wanted)
    with filler.open("wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        while size > 0:
            n = f.write(chunk[: min(size, len(chunk))])
            size -= n
    return _free(mount)


def _stow(base: str, part: bytes) -> httpx.Response:
    boundary = secrets.token_hex(16)
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
            + f"\r\n--{boundary}--\r\n".encode())
    return httpx.post(
        f"{base}/dicom-web/studies", content=body, timeout=60,
        headers={"Content-Type":
                 f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )


def _stored_are_complete(data_dir: Path) -> int:
    count = assert_store_consistent(data_dir)
    for path in (data_dir / "studies").rglob("*.dcm"):
        assert dcmread(path).pixel_array.shape == (512, 512), path
    return count


def test_disk_full_refuses_on_both_edges_and_recovers_without_restart(
    small_filesystem: Path, chest_study, tmp_path
):
    _study, files = chest_study
    filler = small_filesystem / "filler"
    _leave_free(small_filesystem, filler, 9 * 2**20)  # 3 MiB of filler to give back later
    env = {"RADNODE_MIN_FREE_BYTES": "0"}
    data_dir = small_filesystem / "data"
    scp = RadnodeProcess(data_dir, "scp", env=env)
    api = RadnodeProcess(data_dir, "api", env=env)
    scp.log_path, api.log_path = tmp_path / "scp.log", tmp_path / "api.log"
    scp.start()
    api.start()
    base = f"http://127.0.0.1:{api.http_port}"
    try:
        # C-STORE until the filesystem is full.
        sent = storescu(scp.dicom_port, files[:40], "-v", "--no-halt")
        out = sent.stderr
        assert "Refused: OutOfResources" in out, out[-2000:]
        acked = acknowledged(out)
        refused_dimse = out.count("Refused: OutOfResources")
        assert 0 < len(acked) < 40
        stored = _stored_are_complete(data_dir)
        assert stored == len(acked)

        part = files[45].read_bytes()
        # STOW-RS when the request can be spooled but the instance cannot be written.
        free_a = _leave_free(small_filesystem, filler, len(part) * 3 // 2)
        r = _stow(base, part)
        assert r.status_code == 409, (r.status_code, r.text)
        [failed] = r.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [OUT_OF_RESOURCES]
        assert _stored_are_complete(data_dir) == stored
        # ... and when not even the request fits: refused cleanly, never a server error.
        free_b = _leave_free(small_filesystem, filler, len(part) // 3)
        r = _stow(base, part)
        assert r.status_code == 503, (r.status_code, r.text)
        assert "out of resources" in r.text and r.headers["retry-after"]
        assert _stored_are_complete(data_dir) == stored

        # Space is freed: both edges store again, same processes, no restart.
        filler.unlink()
        pids = (scp.proc.pid, api.proc.pid)  # type: ignore[union-attr]
        again = storescu(scp.dicom_port, files[40:42], "-v")
        assert again.returncode == 0 and again.stderr.count("(Success)") == 2, again.stderr[-2000:]
        r = _stow(base, part)
        assert r.status_code == 200, r.text
        assert _stored_are_complete(data_dir) == stored + 3
        assert (scp.proc.pid, api.proc.pid) == pids  # type: ignore[union-attr]
        assert scp.proc.poll() is None and api.proc.poll() is None  # type: ignore[union-attr]
        on_disk = data_dir / "studies" / _study.study_instance_uid / _study.series_instance_uid
        assert dataset_bytes(on_disk / f"{dcmread(files[45]).SOPInstanceUID}.dcm") == \
            dataset_bytes(files[45])
        record("disk_full", filesystem_mib=12, c_store_sent=40, c_store_acknowledged=len(acked),
               c_store_refused_a700=refused_dimse, stow_free_bytes_store_fails=free_a,
               stow_free_bytes_spool_fails=free_b, stow_status_when_spool_fails=503,
               stored_after_freeing=3)
    finally:
        scp.stop()
        api.stop()
