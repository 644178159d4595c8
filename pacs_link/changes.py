"""Follow an Orthanc's ``/changes`` feed: each StableStudy is fetched by WADO-RS,
stored through the node's durable ingest path and queued once for analysis.

With ``prefetch`` (the default) each NewInstance is fetched as it arrives (its
Part 10 file from Orthanc's REST API, stored as received), so when the study
becomes stable it is already here and only what was missed goes by WADO-RS: the
fetch is off the path from the last instance to the result.

The last sequence number processed is kept in the index (``pacs_state``) and
advanced only after a change is handled, so a restarted follower resumes where
it stopped: no study is missed, and none is fetched twice (instances the node
already holds are skipped, and a study is queued only when it has instances no
job covered). A first start begins at the end of the feed: the PACS's history
is not analysed wholesale.

Feedback loops: instances the node already holds (its own SR and the originals
it forwarded) are never fetched back; SRs from the PACS are stored with
``analyze=False`` so they never make a study due again; instances fetched from
a peer carry its AE title as calling AE, so they are not forwarded back to it.

Several workers on one index: only the holder of the peer's follower lease
(:mod:`pacs_link.lease`) follows the feed, so a study is fetched once; another
worker takes over when the holder dies (after the lease's time) or stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from io import BytesIO
from typing import Any

from orthanc_api_client import exceptions as orthanc_errors
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacs_link import client
from pacs_link.lease import Lease
from pacs_link.outbox import get_state, set_state
from radnode_core.ingest import IngestError
from radnode_core.node import Node
from radnode_core.settings import PacsPeer

logger = logging.getLogger(__name__)

STABLE_STUDY = "StableStudy"
NEW_INSTANCE = "NewInstance"
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SEQ_KEY = "changes_seq"
LEASE_KEY = "changes_lease"
LEASE_MIN_S = 30.0
"""Shortest follower lease: a holder that stops renewing is replaced after this long."""


def encoded(ds: Dataset) -> tuple[bytes, str]:
    """A retrieved dataset as the bytes a C-STORE would carry, in its transfer syntax."""
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(meta.TransferSyntaxUID)) if meta and "TransferSyntaxUID" in meta else None
    if ts is None or ts == "1.2.840.10008.1.2.1.99":  # unknown or deflated: re-encode
        ts = ExplicitVRLittleEndian
    buf = DicomBytesIO()
    buf.is_little_endian = ts.is_little_endian
    buf.is_implicit_VR = ts.is_implicit_VR
    write_dataset(buf, ds)
    return buf.getvalue(), str(ts)


def split_part10(part10: bytes) -> tuple[bytes, str, str]:
    """(dataset bytes, transfer syntax UID, SOP Class UID) of a Part 10 file (PS3.10 7.1):
    the bytes after the File Meta Information, exactly as a C-STORE would carry them."""
    if len(part10) < 144 or part10[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file")
    # (0002,0000) File Meta Information Group Length, explicit VR little endian UL
    if part10[132:138] != b"\x02\x00\x00\x00UL":
        raise ValueError("File Meta Information does not start with its group length")
    end = 144 + int.from_bytes(part10[140:144], "little")
    meta = read_dataset(BytesIO(part10[132:end]), is_implicit_VR=False, is_little_endian=True)
    ts = str(meta.get("TransferSyntaxUID", ""))
    if not ts:
        raise ValueError("File Meta Information without Transfer Syntax UID")
    return part10[end:], ts, str(meta.get("MediaStorageSOPClassUID", ""))


class LeaseLost(RuntimeError):
    """Another process took the follower lease over during a batch: stop following."""


def _tag(item: dict[str, Any], tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


class ChangesFollower:
    def __init__(self, node: Node, peer: PacsPeer) -> None:
        self.node = node
        self.peer = peer
        self.poll_s = float(node.settings.changes_poll_s)
        self.backoff_max_s = float(node.settings.outbox_backoff_max_s)
        self.status = client.PeerStatus(node.index)
        self._orthanc: Any = None
        self._web: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lease = Lease(node.index, peer.name, LEASE_KEY, max(LEASE_MIN_S, 10 * self.poll_s))
        self.leading = False

    @property
    def orthanc(self) -> Any:
        if self._orthanc is None:
            self._orthanc = client.orthanc(self.peer)
        return self._orthanc

    @property
    def web(self) -> Any:
        if self._web is None:
            self._web = client.dicomweb(self.peer)
        return self._web

    def last_seq(self) -> int:
        seq = get_state(self.node.index, self.peer.name, SEQ_KEY)
        if seq is None:
            seq = int(self.orthanc.get_json("changes?last")["Last"])
            set_state(self.node.index, self.peer.name, SEQ_KEY, seq)
            logger.info(
                "following the PACS changes feed from its current end",
                extra={"peer": self.peer.name, "seq": seq},
            )
        return int(seq)

    def run_once(self) -> int:
        """Handle the changes after the persisted sequence number; returns how many."""
        since = self.last_seq()
        changes, last, _done = self.orthanc.get_changes(since=since, limit=100)
        seq = since
        for change in changes:
            if not self.leading:
                raise LeaseLost(self.peer.name)
            if str(change.change_type) == NEW_INSTANCE and self.peer.prefetch:
                self.prefetch_instance(change.resource_id)
            elif str(change.change_type) == STABLE_STUDY:
                self.handle_stable_study(change.resource_id)
                set_state(self.node.index, self.peer.name, SEQ_KEY, int(change.sequence_id))
            seq = int(change.sequence_id)
        seq = max(seq, int(last or 0))
        if seq > since:
            set_state(self.node.index, self.peer.name, SEQ_KEY, seq)
        self.status.record(self.peer, None)
        return len(changes)

    def handle_stable_study(self, orthanc_id: str) -> int | None:
        """Fetch what the node lacks of the study and queue it; returns the job id or None."""
        try:
            study = self.orthanc.get_json(f"studies/{orthanc_id}")
        except orthanc_errors.ResourceNotFound:
            logger.info("stable study deleted before it was fetched", extra={"id": orthanc_id})
            return None
        study_uid = study["MainDicomTags"]["StudyInstanceUID"]
        started = time.perf_counter()
        fetched = self.fetch_study(study_uid)
        # Prefetched instances are already here: queue whatever no job covers yet (nothing
        # when the change is only the arrival of the node's own SR).
        job_id = self.node.queue.enqueue_if_due(study_uid, "pacs")
        if job_id is None and not fetched:
            return None
        self.node.metrics.pacs_studies_fetched.labels(peer=self.peer.name).inc()
        logger.info(
            "study fetched from PACS",
            extra={
                "peer": self.peer.name,
                "study_uid": study_uid,
                "instances": fetched,
                "job_id": job_id,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return job_id

    def prefetch_instance(self, orthanc_id: str) -> bool:
        """Store one instance as soon as the PACS has it (its Part 10 file, as stored), so
        the StableStudy finds the study here and analysis starts at once. Instances the
        node holds (its SR, forwarded originals) are not fetched. Returns True if stored."""
        try:
            tags = self.orthanc.get_json(f"instances/{orthanc_id}")
        except orthanc_errors.ResourceNotFound:
            return False
        sop_uid = tags.get("MainDicomTags", {}).get("SOPInstanceUID")
        if not sop_uid or self.node.index.find_instance(str(sop_uid)) is not None:
            return False
        try:
            part10 = self.orthanc.get_binary(f"instances/{orthanc_id}/file")
        except orthanc_errors.ResourceNotFound:
            return False
        try:
            raw, ts, sop_class = split_part10(part10)
        except ValueError as exc:
            logger.warning(
                "instance from PACS unreadable", extra={"peer": self.peer.name, "error": str(exc)}
            )
            return False
        return bool(self._ingest(raw, ts, sop_class))

    def fetch_study(self, study_uid: str) -> int:
        """WADO-RS what the node does not hold yet (whole series when none of it is here)."""
        listing = self.web.search_for_instances(
            study_instance_uid=study_uid,
            fields=["SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"],
        )
        missing: dict[str, list[str]] = defaultdict(list)
        known: dict[str, int] = defaultdict(int)
        for item in listing:
            series_uid, sop_uid = _tag(item, "0020000E"), _tag(item, "00080018")
            if not series_uid or not sop_uid:
                continue
            if self.node.index.find_instance(sop_uid) is None:
                missing[series_uid].append(sop_uid)
            else:
                known[series_uid] += 1
        count = 0
        for series_uid, sop_uids in missing.items():
            if known[series_uid]:
                datasets = [
                    self.web.retrieve_instance(study_uid, series_uid, uid) for uid in sop_uids
                ]
            else:
                datasets = self.web.retrieve_series(study_uid, series_uid)
            for ds in datasets:
                count += self._store(ds)
        return count

    def _store(self, ds: Dataset) -> int:
        raw, ts = encoded(ds)
        return self._ingest(raw, ts, str(ds.get("SOPClassUID", "")))

    def _ingest(self, raw: bytes, ts: str, sop_class: str) -> int:
        is_sr = sop_class.startswith(SR_CLASS_PREFIX)
        try:
            result = self.node.ingestor.ingest(
                raw, ts, source="pacs", calling_aet=self.peer.ae_title, analyze=not is_sr
            )
        except IngestError as exc:  # logged by the ingestor; the rest of the study goes on
            logger.warning(
                "instance from PACS refused", extra={"peer": self.peer.name, "error": exc.comment}
            )
            return 0
        return 0 if result.duplicate else 1

    # -- loop ------------------------------------------------------------------------

    def lead(self) -> bool:
        """Hold (take or renew) the follower lease; False while another process holds it."""
        leading = self.lease.acquire()
        if leading != self.leading:
            logger.info(
                "took the PACS changes follower lease"
                if leading
                else "another process holds the PACS changes follower lease",
                extra={"peer": self.peer.name, "holder": self.lease.holder},
            )
        self.leading = leading
        return leading

    def _renew_while_leading(self) -> None:
        """Renew the held lease every third of its time, also while a long fetch (a whole
        series by WADO-RS) holds the follower's own thread."""
        while not self._stop.wait(self.lease.ttl_s / 3):
            if not self.leading:
                continue
            try:
                self.lead()
            except Exception:  # noqa: BLE001 - the database is away: retried next tick
                logger.warning("follower lease renewal failed", extra={"peer": self.peer.name})

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if not self.leading and not self.lead():  # held: renewed by its own thread
                    self._stop.wait(self.poll_s)
                    continue
                busy = self.run_once()
                failures = 0
            except LeaseLost:
                self.leading = False
                logger.info(
                    "the PACS changes feed lease was taken over", extra={"peer": self.peer.name}
                )
                continue
            except Exception as exc:  # noqa: BLE001 - reported, retried with backoff
                failures += 1
                self.status.record(self.peer, client.describe(self.peer, exc))
                if not isinstance(exc, orthanc_errors.OrthancApiException):
                    logger.exception("changes follower error", extra={"peer": self.peer.name})
                self._orthanc = self._web = None
                self._stop.wait(min(self.backoff_max_s, self.poll_s * 2**failures))
                continue
            if not busy:
                self._stop.wait(self.poll_s)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name=f"radnode-changes-{self.peer.name}", daemon=True
        )
        self._thread.start()
        threading.Thread(
            target=self._renew_while_leading, name=f"radnode-lease-{self.peer.name}", daemon=True
        ).start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.leading:
            try:
                self.lease.release()
            except Exception:  # noqa: BLE001 - the lease then expires on its own
                logger.warning(
                    "could not release the follower lease", extra={"peer": self.peer.name}
                )
