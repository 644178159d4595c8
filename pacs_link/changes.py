"""Follow an Orthanc's ``/changes`` feed: the instances it receives are fetched
while it receives them, stored through the node's durable ingest path, and each
study is queued for analysis once it is complete.

Fetching (:mod:`pacs_link.fetch`): each NewInstance is fetched as it appears in
the feed (with ``prefetch``, the default), a few at a time, each Part 10 file
streamed to disk. The SOP Instance UIDs of a batch of the feed come in one
``/tools/bulk-content`` request, so each instance then costs the PACS one request,
its file. The feed is read ahead of the fetches (up to a batch of ids waits for a
fetch thread), so the follower sees an instance within a poll of the PACS storing
it even while its fetches lag behind. A StableStudy fetches whatever of the study
the node still lacks the same way, and fails (to be retried) if any of it cannot
be fetched.

Completion: whichever comes first of the PACS's StableStudy (Orthanc's
``StableAge`` after its last instance) and the follower's own quiet period
(``quiet_s`` of the peer, shorter than a usual StableAge): no new instance of the
study in the feed for that long, the feed read to its end and no fetch
outstanding. The period runs from the read of the feed that listed the study's
last instance, not from its fetch: a fetch that lags behind the PACS overlaps it
instead of adding to it, and the feed was still read to its end ``quiet_s`` later
with nothing new for the study. A study completed early that gets more instances
later is queued again for them, as a new version.

The last sequence number processed is kept in the index (``pacs_state``) and
advanced only after a change is handled, so a restarted follower resumes where
it stopped: no study is missed, and none is fetched twice (instances the node
already holds are skipped, and a study is queued only when it has instances no
job covered). An instance whose fetch failed is covered by its study's
StableStudy, which comes later in the feed. A first start begins at the end of
the feed: the PACS's history is not analysed wholesale.

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
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from orthanc_api_client import exceptions as orthanc_errors

from pacs_link import client
from pacs_link.fetch import FetchFailed, InstanceFetcher, part10_header
from pacs_link.lease import Lease
from pacs_link.outbox import get_state, set_state
from radnode_core.node import Node
from radnode_core.settings import PacsPeer

logger = logging.getLogger(__name__)

STABLE_STUDY = "StableStudy"
NEW_INSTANCE = "NewInstance"
SEQ_KEY = "changes_seq"
LEASE_KEY = "changes_lease"
LEASE_MIN_S = 30.0
"""Shortest follower lease: a holder that stops renewing is replaced after this long."""
CHANGES_BATCH = 500
ACTIVE_POLL_S = 0.1
"""Feed poll interval while a study is arriving (fetches outstanding or a study not yet
complete): new instances are fetched within this of Orthanc storing them."""


def split_part10(part10: bytes) -> tuple[bytes, str, str]:
    """(dataset bytes, transfer syntax UID, SOP Class UID) of a Part 10 file (PS3.10 7.1):
    the bytes after the File Meta Information, exactly as a C-STORE would carry them."""
    offset, ts, sop_class = part10_header(part10[: 144 + (1 << 16)])
    return part10[offset:], ts, sop_class


class LeaseLost(RuntimeError):
    """Another process took the follower lease over during a batch: stop following."""


class ChangesFollower:
    """Follows one peer's feed. ``on_queued`` is called after it queues a study's job
    (the composition root passes the process's worker's ``wake``, so the job is claimed
    at once rather than at the worker's next poll)."""

    def __init__(
        self, node: Node, peer: PacsPeer, on_queued: Callable[[], None] | None = None
    ) -> None:
        self.node = node
        self.peer = peer
        self.on_queued = on_queued
        self.poll_s = float(node.settings.changes_poll_s)
        self.backoff_max_s = float(node.settings.outbox_backoff_max_s)
        self.status = client.PeerStatus(node.index)
        self._orthanc: Any = None
        self._fetcher: InstanceFetcher | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lease = Lease(node.index, peer.name, LEASE_KEY, max(LEASE_MIN_S, 10 * self.poll_s))
        self.leading = False
        self._lock = threading.Lock()
        self._arrived: dict[str, float] = {}  # study UID -> when the feed listed its last one
        self._listed: dict[str, float] = {}  # Orthanc id -> when the feed listed it
        self._read_to_end_at = 0.0  # when the last read that reached the feed's end began
        self._failed: set[str] = set()  # Orthanc ids of instances whose fetch failed
        self._caught_up = False

    @property
    def orthanc(self) -> Any:
        if self._orthanc is None:
            self._orthanc = client.orthanc(self.peer)
        return self._orthanc

    @property
    def fetcher(self) -> InstanceFetcher:
        if self._fetcher is None:
            self._fetcher = InstanceFetcher(
                self.node,
                self.peer,
                self.peer.fetch_workers,
                on_stored=self._stored,
                queued=CHANGES_BATCH,
            )
        return self._fetcher

    def _stored(self, orthanc_id: str, study_uid: str) -> None:
        with self._lock:
            listed = self._listed.pop(orthanc_id, None)
            at = time.monotonic() if listed is None else listed
            self._arrived[study_uid] = max(at, self._arrived.get(study_uid, at))

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
        """Handle the changes after the persisted sequence number, then queue the studies
        that have gone quiet; returns how many changes."""
        since = self.last_seq()
        read_at = time.monotonic()
        changes, last, done = self.orthanc.get_changes(since=since, limit=CHANGES_BATCH)
        listed_at = time.monotonic()
        new = [str(c.resource_id) for c in changes if str(c.change_type) == NEW_INSTANCE]
        sop_uids = self.sop_uids(new) if new and self.peer.prefetch else {}
        seq = since
        for change in changes:
            if not self.leading:
                raise LeaseLost(self.peer.name)
            if str(change.change_type) == NEW_INSTANCE and self.peer.prefetch:
                orthanc_id = str(change.resource_id)
                self.prefetch_instance(orthanc_id, sop_uids.get(orthanc_id), listed_at)
            elif str(change.change_type) == STABLE_STUDY:
                self.handle_stable_study(change.resource_id)
                set_state(self.node.index, self.peer.name, SEQ_KEY, int(change.sequence_id))
            seq = int(change.sequence_id)
        seq = max(seq, int(last or 0))
        if seq > since:
            set_state(self.node.index, self.peer.name, SEQ_KEY, seq)
        self._caught_up = bool(done) or not changes
        if self._caught_up:
            self._read_to_end_at = read_at
        self.complete_quiet_studies()
        self.status.record(self.peer, None)
        return len(changes)

    @property
    def arriving(self) -> bool:
        """True while fetches are outstanding or a fetched study is not queued yet."""
        with self._lock:
            waiting = bool(self._arrived)
        return waiting or (self._fetcher is not None and self._fetcher.pending > 0)

    def sop_uids(self, orthanc_ids: list[str]) -> dict[str, str]:
        """SOP Instance UID of each instance the PACS still holds, in one request
        (``/tools/bulk-content``, Orthanc 1.9.4 on); empty where the PACS cannot answer
        it, and each fetch then asks for its instance's tags itself."""
        try:
            found = self.orthanc.post(
                "tools/bulk-content",
                json={"Resources": orthanc_ids, "Level": "Instance", "Metadata": False},
            ).json()
        except (orthanc_errors.OrthancApiException, ValueError) as exc:
            logger.info(
                "no bulk instance listing from the PACS; instances are looked up one by one",
                extra={"peer": self.peer.name, "error": str(exc)},
            )
            return {}
        uids = {}
        for item in found if isinstance(found, list) else []:
            sop_uid = (item.get("MainDicomTags") or {}).get("SOPInstanceUID")
            if item.get("ID") and sop_uid:
                uids[str(item["ID"])] = str(sop_uid)
        return uids

    def prefetch_instance(
        self, orthanc_id: str, sop_uid: str | None = None, listed_at: float | None = None
    ) -> Future[str | None]:
        """Fetch one instance as soon as the PACS has it, in the background (a failure is
        remembered: the study then waits for its StableStudy, which fetches what is missing).
        ``listed_at``: when the feed listed it, the start of its study's quiet period."""
        with self._lock:
            self._listed[orthanc_id] = time.monotonic() if listed_at is None else listed_at
        future = self.fetcher.submit(orthanc_id, on_failed=self._prefetch_failed, sop_uid=sop_uid)
        future.add_done_callback(lambda _: self._forget(orthanc_id))
        return future

    def _forget(self, orthanc_id: str) -> None:
        with self._lock:
            self._listed.pop(orthanc_id, None)

    def _prefetch_failed(self, orthanc_id: str, error: BaseException) -> None:
        logger.warning(
            "prefetch from PACS failed; the study waits for its StableStudy",
            extra={"peer": self.peer.name, "id": orthanc_id, "error": str(error)},
        )
        with self._lock:
            self._failed.add(orthanc_id)

    def complete_quiet_studies(self, now: float | None = None) -> list[int]:
        """Queue each fetched study the feed listed no new instance of for the peer's
        ``quiet_s`` up to its last read to the end (``now`` in place of that read's time),
        once no fetch is outstanding (an outstanding one may be of that study). Not while
        a prefetch has failed: StableStudy then fetches the rest."""
        if not self._caught_up or (self._fetcher is not None and self._fetcher.pending):
            return []
        now = self._read_to_end_at if now is None else now
        with self._lock:
            if self._failed:
                return []
            due = [uid for uid, t in self._arrived.items() if now - t >= self.peer.quiet_s]
            for uid in due:
                del self._arrived[uid]
        jobs = []
        for study_uid in due:
            job_id = self.node.queue.enqueue_if_due(study_uid, "pacs")
            if job_id is not None:
                jobs.append(job_id)
                self._queued()
                self.node.metrics.pacs_studies_fetched.labels(peer=self.peer.name).inc()
                logger.info(
                    "study from PACS complete (quiet)",
                    extra={"peer": self.peer.name, "study_uid": study_uid, "job_id": job_id},
                )
        return jobs

    def handle_stable_study(self, orthanc_id: str) -> int | None:
        """Fetch what the node lacks of the study and queue it; returns the job id or None.
        Raises FetchFailed when an instance could not be fetched (the change is retried)."""
        try:
            study = self.orthanc.get_json(f"studies/{orthanc_id}")
        except orthanc_errors.ResourceNotFound:
            logger.info("stable study deleted before it was fetched", extra={"id": orthanc_id})
            return None
        study_uid = study["MainDicomTags"]["StudyInstanceUID"]
        started = time.perf_counter()
        try:
            fetched = self.fetch_study(orthanc_id)
        finally:
            if self._thread is None:  # called on its own (a PACS's notification)
                self.close()
        with self._lock:
            self._arrived.pop(study_uid, None)
        # Prefetched instances are already here: queue whatever no job covers yet (nothing
        # when the change is only the arrival of the node's own SR).
        job_id = self.node.queue.enqueue_if_due(study_uid, "pacs")
        if job_id is not None:
            self._queued()
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

    def _queued(self) -> None:
        if self.on_queued is not None:
            self.on_queued()

    def fetch_study(self, orthanc_id: str) -> int:
        """Fetch every instance of the study the node does not hold yet; returns how many
        were stored. Waits for the prefetches still running first (they may be of it)."""
        fetcher = self.fetcher
        fetcher.wait_idle()
        instances = self.orthanc.get_json(f"studies/{orthanc_id}/instances")
        futures: list[Future[str | None]] = []
        for item in instances:
            sop_uid = (item.get("MainDicomTags") or {}).get("SOPInstanceUID")
            if not sop_uid or self.node.index.find_instance(str(sop_uid)) is not None:
                continue
            futures.append(fetcher.submit(item["ID"], sop_uid=str(sop_uid)))
        count, failed = 0, []
        for future in futures:
            try:
                count += future.result() is not None
            except FetchFailed as exc:
                failed.append(str(exc))
        with self._lock:
            self._failed.difference_update(str(item["ID"]) for item in instances)
        if failed:
            raise FetchFailed(f"{len(failed)} instances of study {orthanc_id}: {failed[0]}")
        return count

    def close(self) -> None:
        """Finish the fetches under way and end the fetch threads."""
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None

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
        study at its StableStudy) holds the follower's own thread."""
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
            except FetchFailed as exc:
                failures += 1
                logger.warning(
                    "fetch from PACS failed; the change is retried",
                    extra={"peer": self.peer.name, "error": str(exc)},
                )
                self._stop.wait(min(self.backoff_max_s, self.poll_s * 2**failures))
                continue
            except Exception as exc:  # noqa: BLE001 - reported, retried with backoff
                failures += 1
                self.status.record(self.peer, client.describe(self.peer, exc))
                if not isinstance(exc, orthanc_errors.OrthancApiException):
                    logger.exception("changes follower error", extra={"peer": self.peer.name})
                self._orthanc = None
                self._stop.wait(min(self.backoff_max_s, self.poll_s * 2**failures))
                continue
            if not busy:
                self._stop.wait(ACTIVE_POLL_S if self.arriving else self.poll_s)

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
        self.close()
        if self.leading:
            try:
                self.lease.release()
            except Exception:  # noqa: BLE001 - the lease then expires on its own
                logger.warning(
                    "could not release the follower lease", extra={"peer": self.peer.name}
                )
