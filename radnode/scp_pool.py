"""Several receiver processes on one DICOM port (``scp_processes``), supervised.

One Python process receives on one core at a time (the GIL), however many associations it
serves. With ``scp_processes`` above 1, the process that runs ``radnode scp`` or ``radnode
serve`` starts that many receiver processes instead of an SCP of its own. Each builds its
own node over the same store and index. The parent:

* runs the store's start-up recovery once, before any receiver starts;
* listens on the DICOM port, and the DICOM TLS port when one is set, and hands each
  connection it accepts to the receiver serving the fewest (:mod:`dimse_scp.handoff`), so
  four modalities on four receivers get one each. The ports stay open while a receiver
  restarts: its share goes to the others;
* runs the one quiet-period sweeper; each receiver queues the studies of the associations
  it released. :meth:`radnode_core.jobs.JobQueue.enqueue_if_due` is one transaction in the
  shared index, so two processes completing one study queue one job;
* restarts a receiver that ended on its own (after a pause if it keeps failing at once)
  and counts it in ``radnode_scp_process_restarts``. The connections it was serving are
  gone, unacknowledged instances with them; every acknowledged one was already durable
  and indexed. The store is then not marked cleanly shut down, so the next start
  reconciles it (files renamed into place whose commit the crash interrupted);
* passes SIGTERM (or SIGINT) on: it closes the ports, each receiver lets the associations
  it is serving finish (up to ``DRAIN_S``) and stops, and the parent waits for all of them
  before it marks a clean shutdown. A receiver whose parent is gone stops by itself.

What each process counts for itself: ``max_associations``, ``max_associations_per_aet``
and ``max_negotiating_per_peer`` hold per receiver.
Receiver ``k`` (1..N) serves its own Prometheus registry on ``metrics_port + k`` when
``metrics_port`` is set; the parent's registry (index gauges, restarts) stays on
``metrics_port`` and, in ``serve``, on the HTTP app's /metrics. Audit messages go to the
same daily file, one ``O_APPEND`` write each, with each process's pid as its participant.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path

from dimse_scp.completion import CompletionTracker
from dimse_scp.handoff import LISTEN_BACKLOG, Dispatcher, can_hand_off, channel_pair
from radnode.assembly import Scp, build_node
from radnode_core.logs import configure_logging
from radnode_core.node import Node
from radnode_core.settings import Settings

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
"""How long the receivers have to import, open the index and listen."""
STOP_TIMEOUT_S = 30.0
"""How long a receiver has to stop after SIGTERM before it is killed."""
DRAIN_S = 10.0
"""How long a stopping receiver lets its open associations finish (its port is closed)."""
_WATCH_S = 0.2
_QUICK_FAILURE_S = 10.0
_MAX_BACKOFF_S = 30.0


class ScpPoolError(RuntimeError):
    """The receivers cannot run: no descriptor passing here, a port taken, a receiver that
    fails while starting."""


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU limit
    (a container's ``--cpus``, a pod's CPU limit), which the mask does not show."""
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def process_count(settings: Settings) -> int:
    """``scp_processes`` as a number (``auto``: :func:`available_cpus`)."""
    if settings.scp_processes == "auto":
        return available_cpus()
    return settings.scp_processes


def receiver(node: Node) -> Scp | ScpPool:
    """The SCP of ``node``: in this process, or ``scp_processes`` receiver processes."""
    count = process_count(node.settings)
    return ScpPool(node, count) if count > 1 else Scp(node)


def child_settings(settings: Settings, **update: object) -> Settings:
    """``settings`` as a plain :class:`Settings` a spawned process can unpickle (one loaded
    from a config file is of a class made for that file), with ``update`` applied."""
    values = {name: getattr(settings, name) for name in Settings.model_fields}
    values.update(update)
    return Settings.model_construct(**values)


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``(host, port)``, as pynetdicom's server binds (SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class _Receiver:
    slot: int
    process: SpawnProcess
    ready: Event
    started: float
    quick_failures: int = 0


class ScpPool:
    """``processes`` receiver processes on the DICOM port(s) of ``node``, supervised (module
    docstring). ``start`` returns once every one listens; ``stop`` once every one ended.
    ``crashed`` is true when a receiver ended without being asked to."""

    def __init__(self, node: Node, processes: int) -> None:
        if processes < 2:
            raise ValueError("an ScpPool runs at least 2 receiver processes")
        if not can_hand_off():
            raise ScpPoolError(
                "several receiver processes need a system that passes sockets between "
                "processes (Unix): run one process (scp_processes = 1)"
            )
        self.node = node
        self.processes = processes
        self.settings = node.settings
        self.tracker = CompletionTracker(node.queue, node.settings.quiet_period_s, node.metrics)
        self.restarts = node.metrics.scp_process_restarts
        self.crashed = False
        self._spawn_context = multiprocessing.get_context("spawn")
        self._receivers: dict[int, _Receiver] = {}
        self._dispatcher: Dispatcher | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.settings.dicom_port

    @property
    def tls_port(self) -> int:
        if self.settings.dicom_tls_port is None:
            raise RuntimeError("no DICOM TLS port configured")
        return self.settings.dicom_tls_port

    @property
    def pids(self) -> dict[int, int | None]:
        """Each receiver's slot and process id."""
        with self._lock:
            return {slot: r.process.pid for slot, r in self._receivers.items()}

    # -- start -----------------------------------------------------------------------

    def start(self) -> None:
        self._listen()
        try:
            with self._lock:
                for slot in range(1, self.processes + 1):
                    self._spawn(slot)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        assert self._dispatcher is not None
        self._dispatcher.start()
        self.tracker.start()
        self._watcher = threading.Thread(
            target=self._watch, name="radnode-scp-supervisor", daemon=True
        )
        self._watcher.start()
        s = self.settings
        logger.info(
            "DICOM SCP receiver processes listening",
            extra={
                "aet": s.ae_title,
                "host": s.host,
                "port": s.dicom_port if s.dicom_plain else None,
                "tls_port": s.dicom_tls_port,
                "processes": self.processes,
            },
        )

    def _listen(self) -> None:
        """Open the ports (port 0 resolves to one port for every receiver)."""
        s = self.node.settings
        listeners: dict[str, socket.socket] = {}
        update: dict[str, object] = {}
        try:
            if s.dicom_plain:
                listeners["dicom"] = listen(s.host, s.dicom_port)
                update["dicom_port"] = listeners["dicom"].getsockname()[1]
            if s.dicom_tls_port is not None:
                listeners["tls"] = listen(s.host, s.dicom_tls_port)
                update["dicom_tls_port"] = listeners["tls"].getsockname()[1]
        except OSError as exc:
            for sock in listeners.values():
                sock.close()
            raise ScpPoolError(f"cannot listen on the DICOM port(s) on {s.host}: {exc}") from exc
        self.settings = child_settings(s, **update)
        self._dispatcher = Dispatcher(listeners)

    def _spawn(self, slot: int) -> None:
        """Start the receiver of ``slot`` with channels of its own (lock held)."""
        assert self._dispatcher is not None
        ready = self._spawn_context.Event()
        pairs = {name: channel_pair() for name in self._dispatcher.listeners}
        process = self._spawn_context.Process(
            target=run_receiver,
            args=(self.settings, slot, ready, {name: pair[1] for name, pair in pairs.items()}),
            name=f"radnode-scp-{slot}",
            daemon=True,
        )
        try:
            process.start()
        finally:
            for _mine, theirs in pairs.values():
                theirs.close()
        self._dispatcher.add(slot, {name: pair[0] for name, pair in pairs.items()}, ready.is_set)
        previous = self._receivers.get(slot)
        quick = 0
        if previous is not None and time.monotonic() - previous.started < _QUICK_FAILURE_S:
            quick = previous.quick_failures + 1
        self._receivers[slot] = _Receiver(slot, process, ready, time.monotonic(), quick)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        for r in list(self._receivers.values()):
            while not r.ready.wait(0.1):
                if r.process.exitcode is not None:
                    raise ScpPoolError(
                        f"receiver process {r.slot} exited with status {r.process.exitcode} "
                        "while starting (see its log lines above)"
                    )
                if time.monotonic() > deadline:
                    raise ScpPoolError(
                        f"receiver process {r.slot} not listening after {START_TIMEOUT_S:.0f} s"
                    )

    # -- supervise -------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(_WATCH_S):
            with self._lock:
                ended = [r for r in self._receivers.values() if r.process.exitcode is not None]
            for r in ended:
                self._restart(r)

    def _restart(self, ended: _Receiver) -> None:
        self.crashed = True
        logger.error(
            "receiver process ended; restarting it",
            extra={
                "slot": ended.slot,
                "pid": ended.process.pid,
                "exitcode": ended.process.exitcode,
            },
        )
        try:
            self.node.store.remove_temp_files()
        except OSError as exc:
            logger.warning(
                "temp files of the ended receiver not removed", extra={"error": str(exc)}
            )
        delay = min(_MAX_BACKOFF_S, 0.5 * 2**ended.quick_failures) if ended.quick_failures else 0
        if delay and self._stopping.wait(delay):
            return
        with self._lock:
            if self._stopping.is_set():
                return
            self._spawn(ended.slot)
        self.restarts.inc()

    # -- stop ------------------------------------------------------------------------

    def stop(self) -> None:
        """Close the ports, SIGTERM every receiver and wait for it (kill it after
        ``STOP_TIMEOUT_S``)."""
        self._stopping.set()
        if self._dispatcher is not None:
            self._dispatcher.stop()
        if self._watcher is not None:
            self._watcher.join(timeout=STOP_TIMEOUT_S)
        with self._lock:
            receivers = list(self._receivers.values())
            self._receivers.clear()
        for r in receivers:
            if r.process.exitcode is None:
                r.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for r in receivers:
            r.process.join(max(0.0, deadline - time.monotonic()))
            if r.process.exitcode is None:
                logger.error(
                    "receiver process did not stop in time; killing it",
                    extra={"slot": r.slot, "pid": r.process.pid},
                )
                r.process.kill()
                r.process.join()
            if r.process.exitcode != 0:
                self.crashed = True
        self.tracker.stop()
        if self._dispatcher is not None:
            self._dispatcher.close()


def run_receiver(
    settings: Settings, slot: int, ready: Event, channels: dict[str, socket.socket]
) -> None:
    """One receiver process: the SCP serving the connections its parent hands over through
    ``channels`` (one per port), until SIGTERM or its parent ends.

    It never runs the store's recovery (its siblings are writing) and never marks a clean
    shutdown (the parent does, once all have stopped). SIGINT is left to the parent, which
    passes it on as SIGTERM, so a Ctrl-C in a terminal cannot make a receiver look crashed.
    """
    configure_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    node = build_node(settings)
    scp = Scp(node, sweep=False, channels=channels)
    stop_metrics = None
    try:
        scp.start()
        if settings.metrics_port:
            stop_metrics = node.metrics.serve(settings.metrics_port + slot, settings.host)
        logger.info("receiver process started", extra={"slot": slot, "pid": os.getpid()})
        ready.set()
        while not stop.wait(0.5):
            if os.getppid() != parent:
                logger.warning("receiver process stopping: its parent is gone")
                break
    finally:
        scp.stop()
        _drain(scp, DRAIN_S)
        if stop_metrics is not None:
            stop_metrics()
        node.close(clean=False)


def _drain(scp: Scp, seconds: float) -> None:
    """Wait up to ``seconds`` for the associations still open to end (a modality in the
    middle of a study finishes it) before the index is closed under them."""
    deadline = time.monotonic() + seconds
    while scp.server.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.1)
    left = len(scp.server.ae.active_associations)
    if left:
        logger.warning(
            "receiver process stopping with associations still open", extra={"open": left}
        )
