"""The changes follower against a real Orthanc: instances fetched while Orthanc receives
them and the study queued after the follower's quiet period, which runs from the feed's
listing of the last instance (a lagging fetch overlaps it) and holds across a pause of
the sender; one bulk request for a batch's UIDs, one per instance without it; a fetch
that fails is tried again at the StableStudy, not dropped; an instance is streamed to
disk, never held whole in memory, and one over ``max_instance_bytes`` is refused as it
downloads."""

from __future__ import annotations

import http.client
import http.server
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from ai_node.synth import StudySpec, write_study
from pacs_link import fetch
from pacs_link.changes import ChangesFollower
from radnode.assembly import build_node
from radnode_core.node import Node
from radnode_core.settings import PacsPeer, Settings
from tests.support.orthanc_peer import OrthancPacs
from tests.support.processes import free_port
from tests.support.tools import dcmtk_env, storescu
from tests.support.wait import wait_for

SPEC: dict[str, Any] = {"region": "chest", "slices": 12, "rows": 128, "columns": 128}


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancPacs]:
    # StableAge far off: only the follower's quiet period can complete a study early
    with OrthancPacs(tmp_path / "orthanc", extra={"StableAge": 30}, env=dcmtk_env()) as peer:
        yield peer


def _node(tmp_path: Path, peer: PacsPeer, **settings: Any) -> Node:
    return build_node(Settings(data_dir=tmp_path / "data", pacs_peers=[peer], **settings))


def _follower(node: Node, peer: PacsPeer) -> ChangesFollower:
    follower = ChangesFollower(node, peer)
    follower.leading = True
    follower.last_seq()  # from the feed's current end, as a first start does
    return follower


def _stored(node: Node, study_uid: str) -> int:
    return len(node.index.instances_of_study(study_uid))


def test_instances_are_fetched_as_they_arrive_and_the_study_queued_once_quiet(
    tmp_path: Path, orthanc: OrthancPacs
) -> None:
    study, files = write_study(StudySpec(**SPEC, seed=61), tmp_path / "study")
    uid = study.study_instance_uid
    peer = orthanc.peer(follow_changes=True, quiet_s=0.5, fetch_workers=3)
    node = _node(tmp_path, peer)
    follower = _follower(node, peer)
    try:
        sent = storescu(orthanc.dicom_port, files, called="ORTHANC")
        assert sent.returncode == 0, sent.stderr

        def queued() -> list[dict[str, Any]]:
            follower.run_once()
            return node.queue.jobs_for(uid)

        jobs = wait_for(queued, timeout=20, interval=0.05, what="the study queued")
        assert _stored(node, uid) == len(files)
        assert [(j["reason"], j["version"]) for j in jobs] == [("pacs", len(files))]
        # one more instance later: queued again for it, as a new version
        later = dcmread(files[0])
        later.SOPInstanceUID = later.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        later.save_as(tmp_path / "later.dcm")
        sent = storescu(orthanc.dicom_port, [tmp_path / "later.dcm"], called="ORTHANC")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(queued()) == 2, timeout=20, interval=0.05, what="queued again")
        assert _stored(node, uid) == len(files) + 1
        assert [j["version"] for j in node.queue.jobs_for(uid)] == [len(files), len(files) + 1]
    finally:
        follower.close()
        node.close()


class OrthancProxy:
    """Orthanc's REST API through a proxy that counts the requests by what they ask for,
    answers 503 for instance files while ``failing`` is set (a PACS whose storage is
    briefly unavailable), delays each instance file by ``file_delay_s`` (a slow link),
    and answers 404 for ``/tools/bulk-content`` when ``bulk`` is off (an Orthanc before
    1.9.4)."""

    def __init__(self, target_port: int, failing: bool = False) -> None:
        self.failing = failing
        self.file_delay_s = 0.0
        self.bulk = True
        self.refused = 0
        self.requests: Counter[str] = Counter()
        self.port = free_port()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.endswith("/file"):
                    proxy.requests["file"] += 1
                    if proxy.failing:
                        proxy.refused += 1
                        self._answer(503, [], b"")
                        return
                    time.sleep(proxy.file_delay_s)
                elif self.path.startswith("/instances/"):
                    proxy.requests["instance"] += 1
                self._forward(None)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/tools/bulk-content"):
                    proxy.requests["bulk-content"] += 1
                    if not proxy.bulk:
                        self._answer(404, [], b"")
                        return
                self._forward(body)

            def _forward(self, body: bytes | None) -> None:
                upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = upstream.getresponse()
                self._answer(response.status, response.getheaders(), response.read())
                upstream.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _queue_with_follower(node: Node, follower: ChangesFollower, uid: str) -> float:
    """Run the follower as its loop does (a read of the feed every few tens of ms) until
    the study is queued; returns when (``time.time()``)."""

    def queued() -> float | None:
        follower.run_once()
        return time.time() if node.queue.jobs_for(uid) else None

    return wait_for(queued, timeout=30, interval=0.02, what="the study queued")


def _last_stored_at(node: Node, uid: str) -> float:
    return max(float(i["received_at"]) for i in node.index.instances_of_study(uid))


def test_the_quiet_period_runs_from_the_feed_listing_while_the_fetches_lag(
    tmp_path: Path, orthanc: OrthancPacs
) -> None:
    """Each file comes late (a slow link, one fetch at a time): the study is queued as soon
    as its last file is stored, not a quiet period after that, and never before the feed
    has listed nothing new of it for the quiet period. One ``/tools/bulk-content`` request
    gives the batch's SOP Instance UIDs, so each instance costs one request, its file."""
    study, files = write_study(StudySpec(**SPEC, seed=63), tmp_path / "study")
    uid = study.study_instance_uid
    proxy = OrthancProxy(orthanc.http_port)
    proxy.file_delay_s = 0.15
    quiet_s = 1.0
    peer = orthanc.peer(follow_changes=True, quiet_s=quiet_s, fetch_workers=1, rest_url=proxy.url)
    node = _node(tmp_path, peer)
    woken: list[float] = []
    follower = ChangesFollower(node, peer, on_queued=lambda: woken.append(time.time()))
    follower.leading = True
    follower.last_seq()
    try:
        sent = storescu(orthanc.dicom_port, files, called="ORTHANC")
        assert sent.returncode == 0, sent.stderr
        sent_at = time.time()
        queued_at = _queue_with_follower(node, follower, uid)
        assert [j["version"] for j in node.queue.jobs_for(uid)] == [len(files)]
        stored_at = _last_stored_at(node, uid)
        # the files took longer than the quiet period: the wait overlapped them
        assert stored_at - sent_at > quiet_s
        assert queued_at - stored_at < quiet_s / 2
        assert queued_at - sent_at >= quiet_s
        assert len(woken) == 1 and woken[0] <= queued_at
        assert proxy.requests["file"] == len(files)
        assert proxy.requests["instance"] == 0
        assert 1 <= proxy.requests["bulk-content"] <= 2
    finally:
        follower.close()
        node.close()
        proxy.close()


def test_a_study_whose_sender_pauses_is_queued_once_whole(
    tmp_path: Path, orthanc: OrthancPacs
) -> None:
    """A pause in the middle of a study, shorter than the quiet period, while the first
    half is already fetched: one job, for the whole study."""
    study, files = write_study(StudySpec(**SPEC, seed=64), tmp_path / "study")
    uid = study.study_instance_uid
    peer = orthanc.peer(follow_changes=True, quiet_s=1.5)
    node = _node(tmp_path, peer)
    follower = _follower(node, peer)
    half = len(files) // 2
    try:
        sent = storescu(orthanc.dicom_port, files[:half], called="ORTHANC")
        assert sent.returncode == 0, sent.stderr
        wait_for(
            lambda: follower.run_once() >= 0 and _stored(node, uid) == half,
            timeout=20,
            interval=0.02,
            what="the first half fetched",
        )
        assert node.queue.jobs_for(uid) == []
        sent = storescu(orthanc.dicom_port, files[half:], called="ORTHANC")
        assert sent.returncode == 0, sent.stderr
        _queue_with_follower(node, follower, uid)
        assert [j["version"] for j in node.queue.jobs_for(uid)] == [len(files)]
    finally:
        follower.close()
        node.close()


def test_without_bulk_content_each_instance_is_looked_up_on_its_own(
    tmp_path: Path, orthanc: OrthancPacs
) -> None:
    """A PACS that does not answer ``/tools/bulk-content`` (Orthanc before 1.9.4): every
    instance is still fetched, asking for its tags first."""
    study, files = write_study(StudySpec(**SPEC, seed=65), tmp_path / "study")
    uid = study.study_instance_uid
    proxy = OrthancProxy(orthanc.http_port)
    proxy.bulk = False
    peer = orthanc.peer(follow_changes=True, quiet_s=0.3, rest_url=proxy.url)
    node = _node(tmp_path, peer)
    follower = _follower(node, peer)
    try:
        sent = storescu(orthanc.dicom_port, files, called="ORTHANC")
        assert sent.returncode == 0, sent.stderr
        _queue_with_follower(node, follower, uid)
        assert _stored(node, uid) == len(files)
        assert [j["version"] for j in node.queue.jobs_for(uid)] == [len(files)]
        assert proxy.requests["bulk-content"] >= 1
        assert proxy.requests["instance"] == len(files)
    finally:
        follower.close()
        node.close()
        proxy.close()


def test_a_failed_fetch_is_tried_again_at_the_stable_study_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "FIRST_RETRY_S", 0.01)
    study, files = write_study(StudySpec(**SPEC, seed=62), tmp_path / "study")
    uid = study.study_instance_uid
    with OrthancPacs(tmp_path / "orthanc", extra={"StableAge": 1}, env=dcmtk_env()) as orthanc:
        proxy = OrthancProxy(orthanc.http_port, failing=True)
        peer = orthanc.peer(follow_changes=True, quiet_s=0.2, rest_url=proxy.url)
        node = _node(tmp_path, peer)
        follower = _follower(node, peer)
        try:
            sent = storescu(orthanc.dicom_port, files, called="ORTHANC")
            assert sent.returncode == 0, sent.stderr
            # every prefetch fails: the study is not queued on the quiet period, and the
            # StableStudy that follows fails too, so the feed stays before it
            with pytest.raises(fetch.FetchFailed):
                wait_for(lambda: follower.run_once() and False, timeout=20, interval=0.05)
            assert proxy.refused >= len(files) * fetch.ATTEMPTS
            assert node.queue.jobs_for(uid) == []
            assert _stored(node, uid) == 0
            proxy.failing = False
            wait_for(lambda: follower.run_once() or node.queue.jobs_for(uid), timeout=20)
            assert _stored(node, uid) == len(files)
            assert len(node.queue.jobs_for(uid)) == 1
        finally:
            follower.close()
            node.close()
            proxy.close()


def _large_instance(frames: int) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7.3")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BIG", "Big^Instance", "OT"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = np.zeros((frames, 512, 512), np.uint16).tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_an_instance_is_streamed_to_disk_and_one_over_the_limit_refused_as_it_arrives(
    tmp_path: Path, orthanc: OrthancPacs
) -> None:
    part10 = _large_instance(frames=48)  # 24 MiB
    orthanc.upload(part10)
    (instance_id,) = orthanc.get_json("/instances")
    peer = orthanc.peer()
    node = _node(tmp_path, peer, max_instance_bytes=len(part10) // 4)
    small = fetch.InstanceFetcher(node, peer, workers=1)
    try:
        assert small.fetch(instance_id) is None
        assert node.index.counts()["instances"] == 0
        assert list(node.store.tmp_dir.iterdir()) == []
    finally:
        small.close()
        node.close()
    node = _node(tmp_path, peer)
    fetcher = fetch.InstanceFetcher(node, peer, workers=1)
    try:
        tracemalloc.start()
        stored = fetcher.fetch(instance_id)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert stored is not None
        assert peak < 8 * 1024**2, f"peak {peak / 1024**2:.1f} MiB for a 24 MiB instance"
        assert list(node.store.tmp_dir.iterdir()) == []
    finally:
        fetcher.close()
        node.close()
