"""Prometheus metrics of one radnode process.

Each process owns a :class:`Metrics` object with its own registry (no global
state, so tests can run several nodes in one interpreter). Queue depth and
index counts are read from the index at scrape time, so they are right even
when the SCP, the API and the workers are separate processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _IndexCollector(Collector):
    def __init__(self, queue_depth: Callable[[], int], counts: Callable[[], dict[str, int]]):
        self._queue_depth = queue_depth
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "radnode_queue_depth", "Jobs queued or running.", value=self._queue_depth()
        )
        family = GaugeMetricFamily(
            "radnode_index_objects", "Objects in the index.", labels=["level"]
        )
        for level, count in self._counts().items():
            family.add_metric([level], count)
        yield family


class _OutboxCollector(Collector):
    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]]):
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "radnode_outbox_items",
            "Outbox rows per PACS peer and state (pending, delivered, failed).",
            labels=["peer", "state"],
        )
        for (peer, state), count in self._counts().items():
            family.add_metric([peer, state], count)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.instances_received = Counter(
            "radnode_instances_received",
            "Instances stored (C-STORE or STOW-RS).",
            ["source"],
            registry=self.registry,
        )
        self.bytes_received = Counter(
            "radnode_bytes_received",
            "Bytes of stored instances.",
            ["source"],
            registry=self.registry,
        )
        self.instances_duplicate = Counter(
            "radnode_instances_duplicate",
            "Instances received again with a SOP Instance UID already stored.",
            ["source"],
            registry=self.registry,
        )
        self.instances_rejected = Counter(
            "radnode_instances_rejected",
            "Instances refused, by reason.",
            ["source", "reason"],
            registry=self.registry,
        )
        self.associations_rejected = Counter(
            "radnode_associations_rejected",
            "Associations rejected, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.studies_completed = Counter(
            "radnode_studies_completed",
            "Studies found complete and queued for analysis, by trigger.",
            ["reason"],
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "radnode_store_seconds",
            "Time to validate, write, fsync and index one instance.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "radnode_jobs_finished",
            "Jobs finished, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.outbox_attempts = Counter(
            "radnode_outbox_deliveries",
            "Instances handed to a PACS peer, by outcome (delivered, refused, retry).",
            ["peer", "outcome"],
            registry=self.registry,
        )
        self.pacs_studies_fetched = Counter(
            "radnode_pacs_studies_fetched",
            "Stable studies learnt from a PACS's changes feed and fetched by WADO-RS.",
            ["peer"],
            registry=self.registry,
        )

    def watch_outbox(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self.registry.register(_OutboxCollector(counts))

    def watch_index(
        self, queue_depth: Callable[[], int], counts: Callable[[], dict[str, int]]
    ) -> None:
        self.registry.register(_IndexCollector(queue_depth, counts))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
