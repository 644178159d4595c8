"""Fetch instances from an Orthanc peer, a few at a time, each streamed to disk.

Each instance is read from Orthanc's REST API as the Part 10 file it stored
(``/instances/{id}/file``) and written in chunks to a file in the store's temp
folder, which the durable ingest path then validates, fsyncs and indexes
(:meth:`radnode_core.ingest.Ingestor.ingest_file`). Nothing holds an instance in
memory, a download stops as soon as it passes ``max_instance_bytes``, and at most
``workers`` downloads run while at most ``queued`` more wait (an id each): a
hostile or huge study costs bounded memory and a bounded number of threads and
sockets.

A caller that already knows an instance's SOP Instance UID (from a listing or
``/tools/bulk-content``) passes it, and the instance costs one request (its
file) instead of two.

A download that fails (connection, timeout, HTTP 5xx) is tried again with a
growing delay; one that still fails raises :class:`FetchFailed` from its future,
so the caller keeps the change that asked for it and retries it later. An
instance the PACS no longer has, or one the node refuses, is not retried.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import requests
from pydicom.filereader import read_dataset

from pacs_link import client
from radnode_core.ingest import IngestError
from radnode_core.node import Node
from radnode_core.settings import PacsPeer

logger = logging.getLogger(__name__)

SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
CHUNK = 1 << 20
ATTEMPTS = 4
FIRST_RETRY_S = 0.25
META_MAX = 1 << 16
"""Longest File Meta Information group accepted (PS3.10 7.1); real ones are a few hundred bytes."""


class FetchFailed(RuntimeError):
    """An instance could not be fetched after every attempt: try the change again later."""


class Refused(Exception):
    """The PACS's file is not one the node takes (not Part 10, too large): not retried."""


def part10_header(head: bytes) -> tuple[int, str, str]:
    """(offset of the dataset, transfer syntax UID, SOP Class UID) of a Part 10 file from
    its first bytes (PS3.10 7.1); ``head`` must hold the whole File Meta Information."""
    if len(head) < 144 or head[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file")
    # (0002,0000) File Meta Information Group Length, explicit VR little endian UL
    if head[132:138] != b"\x02\x00\x00\x00UL":
        raise ValueError("File Meta Information does not start with its group length")
    end = 144 + int.from_bytes(head[140:144], "little")
    if end > len(head):
        raise ValueError("File Meta Information longer than allowed")
    meta = read_dataset(BytesIO(head[132:end]), is_implicit_VR=False, is_little_endian=True)
    ts = str(meta.get("TransferSyntaxUID", ""))
    if not ts:
        raise ValueError("File Meta Information without Transfer Syntax UID")
    return end, ts, str(meta.get("MediaStorageSOPClassUID", ""))


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 500
        return status >= 500 or status in (408, 429)
    return isinstance(exc, requests.RequestException | OSError)


class InstanceFetcher:
    """Fetches Orthanc instances by id into the node's store, ``workers`` at a time.

    ``on_stored(orthanc_id, study_uid)`` is called from a fetch thread after each
    instance is durable and indexed, before its future completes (the follower times
    its quiet period with it). ``queued`` fetches may wait beside the running ones
    (default: as many as ``workers``).
    """

    def __init__(
        self,
        node: Node,
        peer: PacsPeer,
        workers: int,
        on_stored: Callable[[str, str], None] | None = None,
        queued: int | None = None,
    ) -> None:
        self.node = node
        self.peer = peer
        self.base = str(peer.orthanc_url)
        self.max_bytes = node.settings.max_instance_bytes
        self.on_stored = on_stored
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"radnode-fetch-{peer.name}")
        self._slots = threading.BoundedSemaphore(workers + (workers if queued is None else queued))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Fetches submitted and not finished."""
        with self._lock:
            return self._pending

    def submit(
        self,
        orthanc_id: str,
        on_failed: Callable[[str, BaseException], None] | None = None,
        sop_uid: str | None = None,
    ) -> Future[str | None]:
        """Queue one instance; blocks while ``workers + queued`` fetches are already queued
        or running. The future gives the study UID when it was stored, None when not.
        ``on_failed(orthanc_id, error)`` runs for a fetch that failed or was cancelled,
        before the fetch stops counting as pending. ``sop_uid``, when known, spares the
        request for the instance's tags."""
        self._slots.acquire()
        with self._lock:
            self._pending += 1
        try:
            future = self._pool.submit(self.fetch, orthanc_id, sop_uid)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda f: self._finish(orthanc_id, f, on_failed))
        return future

    def _finish(
        self,
        orthanc_id: str,
        future: Future[str | None],
        on_failed: Callable[[str, BaseException], None] | None,
    ) -> None:
        try:
            if on_failed is not None:
                error = CancelledError() if future.cancelled() else future.exception()
                if error is not None:
                    on_failed(orthanc_id, error)
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1
        self._slots.release()

    def wait_idle(self, timeout_s: float = 600.0) -> None:
        """Return once every submitted fetch has finished (or after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- one instance --------------------------------------------------------------

    def _session(self) -> requests.Session:
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = client.session(self.peer)
            # Orthanc gzips a response for any client that accepts it: ~100 ms of its CPU
            # for each 0.5 MB slice, against ~3 ms to send it as it is on disk.
            s.headers["Accept-Encoding"] = "identity"
        return s

    def fetch(self, orthanc_id: str, sop_uid: str | None = None) -> str | None:
        """Store one instance unless the node holds it; retries what may pass later."""
        delay = FIRST_RETRY_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._fetch_once(orthanc_id, sop_uid)
            except Refused as exc:
                logger.warning(
                    "instance from PACS refused",
                    extra={"peer": self.peer.name, "id": orthanc_id, "error": str(exc)},
                )
                return None
            except Exception as exc:
                if not _retryable(exc) or attempt == ATTEMPTS:
                    raise FetchFailed(f"{orthanc_id}: {client.describe(self.peer, exc)}") from exc
                logger.info(
                    "fetch from PACS failed, retrying",
                    extra={"peer": self.peer.name, "id": orthanc_id, "attempt": attempt},
                )
                self._local.session = None
                time.sleep(delay)
                delay *= 2
        return None

    def _fetch_once(self, orthanc_id: str, sop_uid: str | None) -> str | None:
        session = self._session()
        if sop_uid is None:
            response = session.get(f"{self.base}/instances/{orthanc_id}", timeout=(10, 60))
            if response.status_code == 404:
                return None
            response.raise_for_status()
            sop_uid = (response.json().get("MainDicomTags") or {}).get("SOPInstanceUID")
            if not sop_uid:
                return None
        if self.node.index.find_instance(str(sop_uid)) is not None:
            return None  # the node's own SR, an original it forwarded, or fetched already
        tmp = self.node.store.tmp_dir / f"pacs-{uuid.uuid4().hex}.part"
        try:
            with session.get(
                f"{self.base}/instances/{orthanc_id}/file", stream=True, timeout=(10, 300)
            ) as file_response:
                if file_response.status_code == 404:
                    return None
                file_response.raise_for_status()
                head = self._download(file_response, tmp)
            return self._ingest(orthanc_id, tmp, head)
        finally:
            tmp.unlink(missing_ok=True)

    def _download(self, response: requests.Response, tmp: Path) -> bytes:
        """Write the body to ``tmp`` in chunks, refusing it once it passes the node's limit;
        returns its first bytes (enough for the File Meta Information)."""
        declared = response.headers.get("Content-Length")
        if self.max_bytes is not None and declared and int(declared) > self.max_bytes + META_MAX:
            raise Refused(f"{declared} bytes, more than max_instance_bytes")
        size = 0
        head = bytearray()
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            for chunk in response.iter_content(CHUNK):
                size += len(chunk)
                if self.max_bytes is not None and size > self.max_bytes + META_MAX:
                    raise Refused(f"more than max_instance_bytes ({self.max_bytes})")
                if len(head) < META_MAX:
                    head += chunk[: META_MAX - len(head)]
                out.write(chunk)
        return bytes(head)

    def _ingest(self, orthanc_id: str, tmp: Path, head: bytes) -> str | None:
        try:
            offset, ts, sop_class = part10_header(head)
        except ValueError as exc:
            raise Refused(str(exc)) from exc
        ingestor = self.node.ingestor
        source: dict[str, Any] = {"source": "pacs", "calling_aet": self.peer.ae_title}
        try:
            if sop_class.startswith(SR_CLASS_PREFIX):
                # SRs from the PACS never make a study due again (feedback loops); they are
                # small and bounded by max_instance_bytes above.
                raw = tmp.read_bytes()[offset:]
                result = ingestor.ingest(raw, ts, analyze=False, **source)
            else:
                result = ingestor.ingest_file(tmp, offset, ts, **source)
        except IngestError as exc:  # logged by the ingestor
            raise Refused(exc.comment) from exc
        if result.duplicate:
            return None
        if self.on_stored is not None:
            self.on_stored(orthanc_id, result.study_uid)
        return result.study_uid
