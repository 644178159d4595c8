"""Assembly of one node's shared parts from its settings (no globals).

The CLI builds a :class:`Node` and starts the parts a subcommand asks for;
tests build one in-process the same way.
"""

from __future__ import annotations

import logging
from functools import cached_property

from radnode.audit import AuditTrail
from radnode.index import Index
from radnode.ingest import Ingestor
from radnode.jobs import JobQueue
from radnode.metrics import Metrics
from radnode.settings import Settings
from radnode.store import InstanceStore

logger = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.index = Index(settings.index_url)
        self.metrics = Metrics()
        self.queue = JobQueue(
            self.index, lease_s=settings.job_lease_s, max_attempts=settings.job_max_attempts
        )
        self.metrics.watch_index(self.queue.depth, self.index.counts)
        if settings.pacs_peers:
            from pacs_link.outbox import Outbox

            self.metrics.watch_outbox(Outbox(self.index).counts)

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

    def recover(self) -> dict[str, int]:
        """Start-up recovery of a process that writes instances (SCP, STOW)."""
        return self.store.recover(reconcile=self.settings.reconcile_on_start)

    def close(self, clean: bool = True) -> None:
        if clean and "store" in self.__dict__:
            self.store.mark_clean_shutdown()
        if "audit" in self.__dict__:
            self.audit.close()
        self.index.close()
