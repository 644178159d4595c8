"""The outbox sender: delivers each peer's due outbox rows by STOW-RS or C-STORE.

STOW-RS (PS3.18 10.5) through dicomweb-client, one request per study and batch;
an instance the PACS lists in FailedSOPSequence (0008,1198) is ``failed`` with
its reason, the rest ``delivered``. C-STORE (PS3.4 B.2) over one association per
batch, optionally TLS. A PACS that is down, refuses the credentials or times out
leaves the rows pending, retried with exponential backoff, and says why in the
log and in ``/readyz``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import urlsplit

from pydicom import Dataset, dcmread
from pynetdicom import AE

from pacs_link import client
from pacs_link.outbox import Item, Outbox
from radnode_core.audit import MINOR_FAILURE, SERIOUS_FAILURE, SUCCESS, StudyRef
from radnode_core.node import Node
from radnode_core.settings import PacsPeer
from radnode_core.store import ZERO_PREAMBLE
from radnode_core.tls import client_context

logger = logging.getLogger(__name__)

BATCH = 100
PROBE_EVERY_S = 30.0


class DeliveryError(Exception):
    """The whole batch could not be delivered now (retry later)."""


class OutboxSender:
    def __init__(self, node: Node, peers: list[PacsPeer] | None = None) -> None:
        self.node = node
        s = node.settings
        self.peers = list(peers if peers is not None else s.pacs_peers)
        self.outbox = Outbox(node.index)
        self.status = client.PeerStatus(node.index)
        self.poll_s = float(s.outbox_poll_s)
        self.backoff_s = float(s.outbox_backoff_s)
        self.backoff_max_s = float(s.outbox_backoff_max_s)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._clients: dict[str, Any] = {}

    def wake(self) -> None:
        """Look for due rows now instead of at the next poll (a result was just queued)."""
        self._wake.set()

    # -- one round -----------------------------------------------------------------

    def run_once(self) -> int:
        """Deliver what is due for every peer; returns the number of rows handled."""
        handled = 0
        for peer in self.peers:
            items = self.outbox.claim(peer.name, BATCH)
            if not items:
                continue
            handled += len(items)
            by_study: dict[str, list[Item]] = defaultdict(list)
            for item in items:
                by_study[item.study_uid].append(item)
            for study_items in by_study.values():
                self._deliver(peer, study_items)
        return handled

    def _deliver(self, peer: PacsPeer, items: list[Item]) -> None:
        datasets: list[tuple[Item, Dataset]] = []
        missing: list[Item] = []
        for item in items:
            row = self.node.index.find_instance(item.sop_instance_uid)
            if row is None:
                missing.append(item)
                continue
            ds = dcmread(self.node.store.path_of(str(row["path"])))
            ds.preamble = ZERO_PREAMBLE  # what STOW-RS sends out starts with zeros (PS3.10 7.1)
            datasets.append((item, ds))
        self.outbox.reject(missing, "instance is no longer in the store")
        if not datasets:
            return
        try:
            if peer.delivery == "cstore":
                refused = self._cstore(peer, [d for _, d in datasets])
            else:
                refused = self._stow(peer, [d for _, d in datasets])
        except Exception as exc:  # noqa: BLE001 - kept, retried, reported
            error = client.describe(peer, exc)
            delay = self.outbox.retry_later(
                [i for i, _ in datasets], error, self.backoff_s, self.backoff_max_s
            )
            self.status.record(peer, error)
            self.node.metrics.outbox_attempts.labels(peer=peer.name, outcome="retry").inc(
                len(datasets)
            )
            logger.warning(
                "delivery failed, will retry",
                extra={"peer": peer.name, "instances": len(datasets), "retry_in_s": delay},
            )
            return
        self.status.record(peer, None)
        bad = [i for i, d in datasets if str(d.SOPInstanceUID) in refused]
        for item in bad:
            self.outbox.reject([item], refused[item.sop_instance_uid])
        good = [i for i, _ in datasets if i not in bad]
        self.outbox.delivered([i.id for i in good])
        self._audit(peer, items[0].study_uid, [d for i, d in datasets if i in good], len(bad))
        m = self.node.metrics.outbox_attempts
        m.labels(peer=peer.name, outcome="delivered").inc(len(good))
        m.labels(peer=peer.name, outcome="refused").inc(len(bad))
        logger.info(
            "delivered to PACS",
            extra={
                "peer": peer.name,
                "study_uid": items[0].study_uid,
                "delivered": len(good),
                "refused": len(bad),
                "kinds": sorted({i.kind for i in good}),
            },
        )

    def _audit(self, peer: PacsPeer, study_uid: str, sent: list[Dataset], refused: int) -> None:
        """One DICOM Instances Transferred message per peer, study and batch (PS3.15 A.5.3.4)."""
        classes = Counter(str(ds.SOPClassUID) for ds in sent)
        if peer.delivery == "cstore":
            destination, address = peer.ae_title, peer.host
        else:
            destination, address = peer.name, urlsplit(peer.dicomweb_url or "").hostname
        outcome = SUCCESS if not refused else MINOR_FAILURE if sent else SERIOUS_FAILURE
        self.node.audit.instances_sent(
            StudyRef(study_uid, dict(classes)),
            destination=destination,
            destination_address=address,
            outcome=outcome,
            outcome_description=f"{peer.delivery} to {peer.name}: {len(sent)} delivered, "
            f"{refused} refused",
        )

    def _stow(self, peer: PacsPeer, datasets: list[Dataset]) -> dict[str, str]:
        """STOW-RS; returns the refused SOP Instance UIDs with their reason."""
        web = self._clients.get(peer.name)
        if web is None:
            web = self._clients[peer.name] = client.dicomweb(peer)
        response = web.store_instances(datasets)
        refused: dict[str, str] = {}
        for failed in response.get("FailedSOPSequence", []) if response else []:
            reason = failed.get("FailureReason")
            refused[str(failed.ReferencedSOPInstanceUID)] = (
                f"refused by {peer.name}: FailureReason 0x{int(reason or 0):04X}"
            )
        return refused

    def _cstore(self, peer: PacsPeer, datasets: list[Dataset]) -> dict[str, str]:
        """C-STORE over one association; returns the instances refused with a failure status."""

        if not (peer.host and peer.port):
            raise DeliveryError(f"PACS peer {peer.name} has no host/port for C-STORE")
        ae = AE(ae_title=self.node.settings.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        for ds in datasets:
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        tls_args = None
        if peer.dicom_tls:  # PS3.15 B.9: TLS 1.2+, the PACS verified against tls_ca_file
            context = client_context(
                peer.tls_ca_file, peer.tls_cert_file, peer.tls_key_file, verify=peer.tls_verify
            )
            tls_args = (context, peer.host)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            raise ConnectionError(
                f"association with {peer.ae_title}@{peer.host}:{peer.port} refused or failed"
            )
        refused: dict[str, str] = {}
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status and "Status" in status else None
                if code is None:
                    raise ConnectionError("C-STORE got no response")
                if code not in (0x0000, 0xB000, 0xB006, 0xB007):
                    refused[str(ds.SOPInstanceUID)] = (
                        f"refused by {peer.name}: C-STORE status 0x{code:04X}"
                    )
        finally:
            assoc.release()
        return refused

    # -- loop ------------------------------------------------------------------------

    def probe(self) -> None:
        for peer in self.peers:
            self.status.record(peer, client.check(peer))

    def run(self) -> None:
        waited = PROBE_EVERY_S
        while not self._stop.is_set():
            try:
                if waited >= PROBE_EVERY_S:
                    self.probe()
                    waited = 0.0
                busy = self.run_once()
            except Exception:  # the index is unavailable: keep trying
                logger.exception("outbox sender loop error")
                busy = 0
            if not busy:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                waited += self.poll_s

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="radnode-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
