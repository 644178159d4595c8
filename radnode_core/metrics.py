"""Prometheus metrics of one radnode process.

Each process owns a :class:`Metrics` object with its own registry (no global
state, so tests can run several nodes in one interpreter). Queue depth and
index counts are read from the index at scrape time, so they are right even
when the SCP, the API and the workers are separate processes.

Per-model metrics carry the model's name as a label (a handful of models) and never a
study, patient or free-text value; the one label taken from the data, the
manufacturer, is folded into a short list of known vendors (:func:`manufacturer_label`)
so that a new scanner cannot add series without bound.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
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


MANUFACTURERS = (
    "agfa",
    "canon",
    "carestream",
    "fujifilm",
    "ge",
    "hologic",
    "konica",
    "philips",
    "samsung",
    "shimadzu",
    "siemens",
    "toshiba",
    "united imaging",
)
"""The vendors a manufacturer label may name; any other is ``other``, none ``unknown``."""

_VENDOR_ALIASES = {"gehc": "ge", "general electric": "ge", "ge medical": "ge", "fuji": "fujifilm"}


def manufacturer_label(value: str | None) -> str:
    """Manufacturer (0008,0070) as a bounded label: a known vendor, ``other`` or ``unknown``."""
    text = re.sub(r"[^a-z ]+", " ", (value or "").lower()).strip()
    if not text:
        return "unknown"
    for alias, vendor in _VENDOR_ALIASES.items():
        if text.startswith(alias):
            return vendor
    for vendor in MANUFACTURERS:
        if text == vendor or text.startswith(vendor + " "):
            return vendor
    return "other"


SCORE_BUCKETS = tuple(round(i / 10, 1) for i in range(1, 11))
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TIME_TO_RESULT_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class _OutboxCollector(Collector):
    def __init__(
        self,
        counts: Callable[[], dict[tuple[str, str], int]],
        oldest_pending: Callable[[], dict[str, float]] | None = None,
    ):
        self._counts = counts
        self._oldest_pending = oldest_pending

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "radnode_outbox_items",
            "Outbox rows per PACS peer and state (pending, delivered, failed).",
            labels=["peer", "state"],
        )
        counts = self._counts()
        for (peer, state), count in counts.items():
            family.add_metric([peer, state], count)
        yield family
        if self._oldest_pending is not None:
            age = GaugeMetricFamily(
                "radnode_outbox_oldest_pending_seconds",
                "Age of the oldest pending outbox row per PACS peer (0 when none is pending).",
                labels=["peer"],
            )
            ages = dict.fromkeys(sorted({peer for peer, _ in counts}), 0.0)
            ages.update(self._oldest_pending())
            for peer, seconds in ages.items():
                age.add_metric([peer], seconds)
            yield age


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
        self.scp_process_restarts = Counter(
            "radnode_scp_process_restarts",
            "Receiver processes (scp_processes) restarted after they ended on their own.",
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

        self.model_inference_seconds = Histogram(
            "radnode_model_inference_seconds",
            "Seconds one model spent on one study (decode, inference and SR).",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.model_time_to_result_seconds = Histogram(
            "radnode_model_time_to_result_seconds",
            "Seconds from the study's last instance received to the model's result.",
            ["model"],
            buckets=TIME_TO_RESULT_BUCKETS,
            registry=self.registry,
        )
        self.model_results = Counter(
            "radnode_model_results",
            "Model results written, by status (done, out_of_scope, failed) and label kind "
            "(positive, negative, none).",
            ["model", "status", "outcome"],
            registry=self.registry,
        )
        self.model_score = Histogram(
            "radnode_model_score",
            "Study scores (the positive probability) of a model's done results.",
            ["model"],
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )
        self.input_studies = Counter(
            "radnode_input_studies",
            "Studies a model analysed, by manufacturer (known vendors, other, unknown).",
            ["model", "manufacturer"],
            registry=self.registry,
        )
        self.input_slice_thickness_mm = Histogram(
            "radnode_input_slice_thickness_mm",
            "Slice Thickness (0018,0050) of the analysed series.",
            ["model"],
            buckets=(0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0),
            registry=self.registry,
        )
        self.input_pixel_spacing_mm = Histogram(
            "radnode_input_pixel_spacing_mm",
            "Pixel Spacing (0028,0030; radiographs: Imager Pixel Spacing) of the analysed "
            "series, the row spacing.",
            ["model"],
            buckets=(0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.2, 1.6, 2.5),
            registry=self.registry,
        )
        self.input_mean_hu = Histogram(
            "radnode_input_mean_hu",
            "Mean HU inside the body (voxels above -500 HU) of the analysed CT series (no "
            "_sum: the values may be negative).",
            ["model"],
            buckets=(-400.0, -300.0, -200.0, -100.0, -50.0, 0.0, 50.0, 100.0, 200.0),
            registry=self.registry,
        )

    def watch(self, collector: Collector) -> None:
        """Add a collector read at scrape time (a feature's index-derived gauges)."""
        self.registry.register(collector)

    def watch_outbox(
        self,
        counts: Callable[[], dict[tuple[str, str], int]],
        oldest_pending: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.registry.register(_OutboxCollector(counts, oldest_pending))

    def watch_index(
        self, queue_depth: Callable[[], int], counts: Callable[[], dict[str, int]]
    ) -> None:
        self.registry.register(_IndexCollector(queue_depth, counts))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> Callable[[], None]:
        """Expose the registry at ``http://host:port/metrics`` on a thread of its own (a
        role without the HTTP app: the worker); returns the function that stops it."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop
