"""One node's shared parts, built from its settings (no globals).

The features (``dimse_scp``, ``ai_node``, ``pacs_link``) and the edges take a
:class:`Node`; the application package (``radnode.assembly``) builds it, wires in
what one feature offers another (:class:`ResultDelivery`) and starts the processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from radnode_core.audit import AuditTrail
from radnode_core.index import Index
from radnode_core.ingest import Ingestor
from radnode_core.jobs import JobQueue
from radnode_core.metrics import Metrics
from radnode_core.retention import Retention, RetentionFacts
from radnode_core.settings import Settings
from radnode_core.store import InstanceStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultSummary:
    """What a result says, for deciding where it goes (the routing rules of the delivery):
    its label and study score, the models that made it (``name/version``) and the
    modality of the series it analysed; None where the study could not be analysed."""

    label: str | None = None
    score: float | None = None
    models: tuple[str, ...] = ()
    modality: str | None = None


class ResultDelivery(Protocol):
    """Queues a study's report for the PACS peers: ``(study UID, SR SOP Instance UID or
    None, the result's summary)``; returns how many instances were queued. Called in the
    step that stored the SR, so a result is never produced without being queued."""

    def __call__(self, study_uid: str, sr_uid: str | None, result: ResultSummary) -> int: ...


class Node:
    """The parts every role shares: settings, index, job queue, store, ingest, audit, metrics.

    ``deliver`` is None on a node with no PACS peer; the assembly sets it otherwise.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.deliver: ResultDelivery | None = None
        # Which studies reached their PACS peers and which wait for retraining: the
        # assembly sets them from the features; without, nothing is ever due for deletion.
        self.retention_facts: RetentionFacts | None = None
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.index = Index(settings.index_url)
        self.metrics = Metrics()
        self.queue = JobQueue(
            self.index, lease_s=settings.job_lease_s, max_attempts=settings.job_max_attempts
        )
        self.metrics.watch_index(self.queue.depth, self.index.counts)

    @cached_property
    def store(self) -> InstanceStore:
        return InstanceStore(
            self.settings.data_dir,
            self.index,
            duplicate_policy=self.settings.duplicate_policy,
            fsync=self.settings.fsync,
            min_free_bytes=self.settings.min_free_bytes,
        )

    @cached_property
    def ingestor(self) -> Ingestor:
        return Ingestor(
            self.store, self.metrics, max_instance_bytes=self.settings.max_instance_bytes
        )

    @cached_property
    def audit(self) -> AuditTrail:
        """The audit trail (PS3.15 A.5) of this process: local log, optional syslog."""
        return AuditTrail.from_settings(self.settings, self.index)

    @cached_property
    def retention(self) -> Retention:
        """The storage retention policy: cleanup, admin deletions and their numbers."""
        return Retention(
            self.settings,
            self.index,
            self.store,
            self.audit,
            self.metrics.registry,
            self.retention_facts,
        )

    def recover(self) -> dict[str, int]:
        """Start-up recovery of a process that writes instances (SCP, STOW): deletions a
        crash interrupted are finished first, or reconciliation would index their files."""
        finished = self.retention.deleter.recover()
        stats = self.store.recover(reconcile=self.settings.reconcile_on_start)
        if finished:
            stats["deletions_finished"] = finished
        return stats

    def close(self, clean: bool = True) -> None:
        if clean and "store" in self.__dict__:
            self.store.mark_clean_shutdown()
        if "audit" in self.__dict__:
            self.audit.close()
        self.index.close()
