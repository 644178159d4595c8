"""The composition root: builds a node from its settings and starts the parts a role runs.

Each process role (``serve``, ``scp``, ``api``, ``worker``) is a few of these parts;
this is the one module that knows every feature and hands each what it needs from
another (the PACS delivery the AI pipeline and the feedback service call).
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from functools import partial

import uvicorn

from ai_node.monitoring import MonitorCollector
from ai_node.pipeline import AnalysisPipeline
from ai_node.registry import ModelRegistry, ModelSet
from ai_node.retention import labelled_not_exported
from ai_node.retrain import trigger as retrain_trigger
from ai_node.worker import Worker
from dicomweb.app import create_app
from dicomweb.timeouts import protocol_class
from dimse_scp.access import AccessPolicy
from dimse_scp.completion import CompletionTracker
from dimse_scp.handlers import StorageHandlers
from dimse_scp.query_retrieve import QueryRetrieveHandlers
from dimse_scp.server import DicomServer
from pacs_link import PacsServices
from pacs_link.outbox import Outbox, queue_study_results
from pacs_link.retention import delivered_studies
from radnode_core.node import Node
from radnode_core.retention import RetentionFacts
from radnode_core.settings import Settings
from radnode_core.tls import client_context

logger = logging.getLogger(__name__)


def build_node(settings: Settings) -> Node:
    """The node of ``settings``, with its PACS delivery wired when it has PACS peers."""
    node = Node(settings)
    node.retention_facts = RetentionFacts(
        delivered=partial(delivered_studies, node.index),
        held=partial(labelled_not_exported, node.index),
    )
    cards = ModelSet(ModelRegistry(settings.models_dir)).active_cards
    node.metrics.watch(MonitorCollector(node.index, cards))
    if settings.pacs_peers:
        node.deliver = partial(queue_study_results, node)
        outbox = Outbox(node.index)
        node.metrics.watch_outbox(outbox.counts, outbox.oldest_pending_age)
    return node


class Scp:
    """The DICOM SCP (storage, and Query/Retrieve unless turned off) and its
    study-completion tracker.

    One of several receiver processes on one port (:mod:`radnode.scp_pool`) takes its
    connections from its parent through ``channels`` and leaves the quiet-period sweep
    (``sweep``) to the parent."""

    def __init__(
        self,
        node: Node,
        *,
        sweep: bool = True,
        channels: dict[str, socket.socket] | None = None,
    ) -> None:
        s = node.settings
        self.sweep = sweep
        self.tracker = CompletionTracker(node.queue, s.quiet_period_s, node.metrics)
        access = AccessPolicy.from_settings(
            s.ae_title, s.allowed_calling_aets, s.require_called_aet
        )
        if not access.allowed and s.host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning(
                "no calling-AE allow-list while listening beyond localhost", extra={"host": s.host}
            )
        handlers = StorageHandlers(
            node.ingestor,
            self.tracker,
            access,
            node.metrics,
            poll_interval_s=s.dimse_poll_interval_s,
            audit=node.audit,
            max_associations_per_aet=s.max_associations_per_aet,
            max_associations=s.max_associations,
        )
        query_retrieve = None
        if s.query_retrieve:
            query_retrieve = QueryRetrieveHandlers(
                node.index,
                node.store,
                s.ae_title,
                s.move_destinations,
                audit=node.audit,
                tls_context=partial(client_context, s.tls_ca_file, s.tls_cert_file, s.tls_key_file),
                poll_interval_s=s.dimse_poll_interval_s,
                max_find_results=s.cfind_max_results,
            )
        self.server = DicomServer(s, handlers, query_retrieve, channels=channels)

    def start(self) -> None:
        self.server.start()
        if self.sweep:
            self.tracker.start()

    def stop(self) -> None:
        self.tracker.stop()
        self.server.stop()


def serve_metrics(node: Node) -> Callable[[], None]:
    """The process's /metrics on ``metrics_port`` when one is set (the worker role has no
    HTTP app of its own); returns the function that stops it."""
    port = node.settings.metrics_port
    if not port:
        return lambda: None
    logger.info("serving metrics", extra={"port": port})
    return node.metrics.serve(port, node.settings.host)


def make_worker(node: Node) -> Worker:
    """The AI worker running the analysis pipeline (models load on the first job)."""
    return Worker(
        node.queue, AnalysisPipeline(node), node.metrics, poll_s=node.settings.worker_poll_s
    )


class Background:
    """What ``serve`` and ``worker`` run beside their main loop: the AI worker, the PACS
    outbox sender and changes followers, the label-count retraining trigger, and the
    storage retention cleanup when it is enabled."""

    def __init__(self, node: Node) -> None:
        self.worker = make_worker(node)
        self.pacs = PacsServices(node, on_queued=self.worker.wake)
        self.trigger = retrain_trigger.LabelTrigger.for_node(node)
        self.retention = node.retention if node.settings.retention_enabled else None

    def start(self) -> None:
        self.worker.start()
        self.pacs.start()
        if self.trigger is not None:
            self.trigger.start()
        if self.retention is not None:
            self.retention.start()

    def stop(self) -> None:
        if self.retention is not None:
            self.retention.stop()
        if self.trigger is not None:
            self.trigger.stop()
        self.pacs.stop()
        self.worker.stop()


def run_http(node: Node) -> None:
    """Serve the HTTP edge until SIGINT/SIGTERM."""
    s = node.settings
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then restores the previous handlers
    # and re-raises the signal: with these handlers that re-raise is harmless and the
    # caller's clean-up (stop the SCP, mark a clean shutdown) runs.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        create_app(node),
        host=s.host,
        port=s.http_port,
        log_config=None,
        access_log=False,
        http=protocol_class(s.http_request_timeout_s),
        timeout_keep_alive=max(1, round(s.http_keep_alive_s)),
        h11_max_incomplete_event_size=64 * 1024,  # request line + headers
        # X-Forwarded-For/-Proto only from the configured reverse proxies, never from
        # whoever connects (uvicorn's default trusts any 127.0.0.1 peer).
        proxy_headers=bool(s.trusted_proxies),
        forwarded_allow_ips=s.trusted_proxies or None,
    )
