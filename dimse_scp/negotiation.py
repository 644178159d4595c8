"""Connections whose A-ASSOCIATE-RQ is not yet in: a deadline each, and a cap per peer address.

pynetdicom reads a PDU whole at the length its header declares (radnode's reader bounds that
length, :mod:`dimse_scp.upper_layer`), each chunk with a blocking ``recv``, and checks the
ARTIM timer (PS3.8 9.1.5) only between PDUs: a peer that sends the 6-byte header of an
A-ASSOCIATE-RQ and then a byte every few seconds holds its connection and thread far beyond
``acse_timeout_s`` and ``network_timeout_s``. pynetdicom also counts such a connection
against the AE's maximum associations, so a few dozen of them lock every modality out before
any AE title is checked.

:class:`NegotiationGuard` tracks each accepted connection until its association is
established (EVT_ESTABLISHED) or the connection closes:

* at most ``max_per_peer`` per IP address negotiate at once; up to ``max_waiting_per_peer``
  more from that address wait, unread and without a thread, for one of them to finish (a
  burst of associations from one busy modality or router is served in turn); a connection
  beyond both is closed at once, before a thread is started for it;
* each has ``deadline_s`` from its accept for the whole request; then its socket is shut
  down (which ends the blocked read) and the association's wait for the request, bounded
  by the same deadline, ends. A silent connection meets the ARTIM timer, which is set to
  the time left as well;
* an association thread that dies while negotiating (pynetdicom raises on some malformed
  requests) leaves its connection and upper-layer thread running for ever: both are
  closed.

The AE's own association limit is lifted (:func:`lift_association_limit`): the handlers
count ``max_associations`` over associations admitted after their AE checks
(:mod:`dimse_scp.handlers`), so connections still negotiating never count.
:class:`GuardedAssociationServer` is pynetdicom's threaded server with the guard attached:
``process_request`` (in the accept thread: start, hold or refuse) and three event handlers.
With a ``channel`` it listens on no port of its own: a dispatcher process accepts and hands
it connections (:mod:`dimse_scp.handoff`), so several receiver processes serve one port.
"""

from __future__ import annotations

import enum
import logging
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from dimse_scp.handoff import ChannelClosed, ReceiverLoad, receive_connection
from dimse_scp.upper_layer import Refused, SpoolingRequestHandler, SpoolSettings
from radnode_core.metrics import Metrics
from radnode_core.throttle import Throttle

logger = logging.getLogger(__name__)

_GRACE_S = 5.0
"""How long past its deadline a connection still counts while its thread winds down."""


def lift_association_limit(ae: AE) -> None:
    """Turn off pynetdicom's count of acceptor threads (it includes connections still
    negotiating); the handlers enforce ``max_associations`` over admitted ones."""
    ae.maximum_associations = sys.maxsize


def _on_event(count: Callable[[Any], None]) -> Callable[[evt.Event], None]:
    return lambda event: count(event.assoc)


def _running(assoc: Any) -> bool:
    """Whether an association's thread has not yet ended (it counts as load till then)."""
    return assoc.ident is None or assoc.is_alive()


def peer_of(client_address: Any) -> str:
    if isinstance(client_address, tuple) and client_address:
        return str(client_address[0]).removeprefix("::ffff:")
    return str(client_address)


@dataclass(eq=False)
class _Pending:
    peer: str
    sock: socket.socket
    deadline: float
    assoc: Association | None = None
    expired: bool = False


@dataclass(eq=False)
class _Waiting:
    peer: str
    sock: socket.socket
    deadline: float
    start: Callable[[], None]


class Admission(enum.Enum):
    """What the accept thread does with a new connection."""

    START = "start"
    WAIT = "wait"
    REFUSE = "refuse"


class NegotiationGuard:
    """The connections of one or more association servers that are still negotiating."""

    def __init__(
        self,
        deadline_s: float,
        max_per_peer: int,
        metrics: Metrics | None = None,
        *,
        max_waiting_per_peer: int = 0,
        log_interval_s: float = 60.0,
        poll_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deadline_s = deadline_s
        self.max_per_peer = max_per_peer
        self.max_waiting_per_peer = max_waiting_per_peer
        self.metrics = metrics
        self.poll_s = poll_s
        self.clock = clock
        self._pending: dict[socket.socket, _Pending] = {}
        self._waiting: dict[str, deque[_Waiting]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log: Throttle[tuple[str, str]] = Throttle(
            log_interval_s, self._repeated, name="radnode-negotiation-log"
        )

    # -- what the server calls -------------------------------------------------------

    def admit(self, sock: socket.socket, peer: str, start: Callable[[], None]) -> Admission:
        """In the accept thread: track a new connection and start it, hold it until one of
        its address's negotiations ends (``start`` is then called), or refuse it."""
        with self._lock:
            now = self.clock()
            orphans = self._prune(now)
            if self._negotiating(peer) < self.max_per_peer:
                self._pending[sock] = _Pending(peer, sock, now + self.deadline_s)
                admission = Admission.START
            elif len(self._waiting.get(peer, ())) < self.max_waiting_per_peer:
                queue = self._waiting.setdefault(peer, deque())
                queue.append(_Waiting(peer, sock, now + self.deadline_s, start))
                admission = Admission.WAIT
            else:
                admission = Admission.REFUSE
            if admission is not Admission.REFUSE:
                self._start()
            ready = self._promote(now)
        for orphan in orphans:
            self._close_orphan(orphan)
        if admission is Admission.REFUSE:
            self._refused(peer, "negotiating_per_peer")
        self._run(ready)
        return admission

    def on_conn_open(self, event: evt.Event) -> None:
        """EVT_CONN_OPEN (before the association's thread starts): bound its wait for the
        A-ASSOCIATE-RQ, and its ARTIM timer, by the time left of the deadline."""
        assoc = event.assoc
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        with self._lock:
            pending = self._pending.get(sock) if sock is not None else None
            if pending is None:
                return
            pending.assoc = assoc
            left = pending.deadline - self.clock()
        if assoc.acse_timeout is None or left < assoc.acse_timeout:
            assoc.acse_timeout = max(0.05, left)

    def on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED: the A-ASSOCIATE-RQ is in; later ACSE waits get the usual timeout."""
        event.assoc.acse_timeout = event.assoc.ae.acse_timeout

    def on_established(self, event: evt.Event) -> None:
        """EVT_ESTABLISHED: the association is accepted; it negotiates no more."""
        assoc = event.assoc
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        with self._lock:
            if sock is not None:
                self._pending.pop(sock, None)
            ready = self._promote(self.clock())
        self._run(ready)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            held = [w for queue in self._waiting.values() for w in queue]
            self._waiting.clear()
        for waiting in held:
            _close(waiting.sock)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._log.close()

    # -- the deadline ----------------------------------------------------------------

    def _negotiating(self, peer: str) -> int:
        return sum(1 for p in self._pending.values() if p.peer == peer)

    def _promote(self, now: float) -> list[_Waiting]:
        """Move waiting connections into free slots of their address (lock held); returns
        those to start, and closes those whose deadline passed while they waited."""
        ready: list[_Waiting] = []
        for peer, queue in list(self._waiting.items()):
            free = self.max_per_peer - self._negotiating(peer)
            while queue and (free > 0 or queue[0].deadline <= now):
                waiting = queue.popleft()
                if waiting.deadline <= now or waiting.sock.fileno() == -1:
                    _close(waiting.sock)
                    continue
                self._pending[waiting.sock] = _Pending(peer, waiting.sock, waiting.deadline)
                ready.append(waiting)
                free -= 1
            if not queue:
                del self._waiting[peer]
        return ready

    @staticmethod
    def _run(ready: list[_Waiting]) -> None:
        for waiting in ready:
            waiting.start()

    def _start(self) -> None:
        """Start the deadline watcher (lock held); it ends when nothing is pending."""
        if self._stop.is_set():
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._watch, name="radnode-negotiation", daemon=True
            )
            self._thread.start()

    def _watch(self) -> None:
        done = False
        while not done and not self._stop.wait(self.poll_s):
            now = self.clock()
            with self._lock:
                orphans = self._prune(now)
                late = [p for p in self._pending.values() if not p.expired and now >= p.deadline]
                for pending in late:
                    pending.expired = True
                ready = self._promote(now)
                if not self._pending and not self._waiting:
                    self._thread = None
                    done = True
            self._run(ready)
            for pending in late:
                _shut(pending.sock)
                self._refused(pending.peer, "request_timeout")
            for pending in orphans:
                self._close_orphan(pending)

    def _prune(self, now: float) -> list[_Pending]:
        """Forget connections that are closed, or whose association thread has ended (lock
        held); returns those whose thread ended with the connection still open."""
        orphans = []
        for sock, pending in list(self._pending.items()):
            assoc = pending.assoc
            ended = assoc is not None and assoc.ident is not None and not assoc.is_alive()
            if sock.fileno() == -1 or now > pending.deadline + _GRACE_S:
                del self._pending[sock]
            elif ended:
                del self._pending[sock]
                orphans.append(pending)
        return orphans

    def _close_orphan(self, pending: _Pending) -> None:
        """The association thread died while negotiating (an exception in pynetdicom) and
        left its connection and upper-layer thread behind: close and stop both."""
        _shut(pending.sock)
        try:
            pending.sock.close()
        except OSError:
            pass
        if pending.assoc is not None:
            pending.assoc.dul.kill_dul()
        self._refused(pending.peer, "negotiation_failed")

    # -- reporting -------------------------------------------------------------------

    def _refused(self, peer: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.associations_rejected.labels(reason=reason).inc()
        if self._log.hit((peer, reason)):
            logger.warning(_MESSAGES[reason], extra={"peer": peer, "reason": reason})

    def _repeated(self, key: tuple[str, str], count: int, _: object) -> None:
        peer, reason = key
        logger.warning(
            _MESSAGES[reason] + ", repeated", extra={"peer": peer, "reason": reason, "count": count}
        )


_MESSAGES = {
    "negotiating_per_peer": "connection closed: too many association requests in progress from "
    "this address",
    "request_timeout": "connection closed: association request not complete in time",
    "negotiation_failed": "connection closed: association negotiation failed",
}


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its own thread


def _close(sock: socket.socket) -> None:
    """Close a connection that never got a thread."""
    _shut(sock)
    try:
        sock.close()
    except OSError:
        pass


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with a :class:`NegotiationGuard`, each
    connection's PDUs bounded and its C-STORE datasets spooled to ``spool``
    (:mod:`dimse_scp.upper_layer`). With a ``channel`` (a receiver's end,
    :mod:`dimse_scp.handoff`) it takes its connections from the channel instead of a port
    of its own, and reports its load back; ``address`` is then the dispatcher's port."""

    request_queue_size = 128
    """The listen backlog. socketserver's default of 5 drops the SYNs of a burst of
    connections, which then retry after 1, 3, 7 and 15 s."""

    def __init__(
        self,
        *args: Any,
        guard: NegotiationGuard | None = None,
        spool: SpoolSettings | None = None,
        on_pdu_refused: Refused | None = None,
        channel: socket.socket | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("request_handler", SpoolingRequestHandler)
        # Read by server_bind, which the base class calls from its constructor.
        self.channel = channel
        self.load = ReceiverLoad(channel, _running) if channel is not None else None
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.spool = spool
        self.on_pdu_refused = on_pdu_refused
        if self.load is not None:
            self.bind(evt.EVT_CONN_OPEN, _on_event(self.load.opened))
            self.bind(evt.EVT_CONN_CLOSE, _on_event(self.load.closed))
        if guard is not None:
            self.bind(evt.EVT_CONN_OPEN, guard.on_conn_open)
            self.bind(evt.EVT_REQUESTED, guard.on_requested)
            self.bind(evt.EVT_ESTABLISHED, guard.on_established)

    def server_bind(self) -> None:
        """pynetdicom's bind (SO_REUSEADDR, the network timeout); with a channel, the
        channel stands in for the listening socket (``serve_forever`` waits on it)."""
        if self.channel is None:
            super().server_bind()
            return
        assert self.socket is not None
        self.socket.close()
        self.socket = self.channel

    def server_activate(self) -> None:
        if self.channel is None:
            super().server_activate()

    def accept(self) -> tuple[socket.socket, Any]:
        """The next connection: accepted on the port, or taken off the channel."""
        if self.channel is None:
            assert self.socket is not None
            return self.socket.accept()
        assert self.load is not None
        try:
            conn, address = receive_connection(self.channel)
        except ChannelClosed:
            # The dispatcher stopped; the process stops too. serve_forever keeps finding
            # the channel readable until then, so do not spin on it.
            time.sleep(0.2)
            raise
        self.load.taken()
        return conn, address

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = self.accept()
        if self.ssl_context:
            conn = self.ssl_context.wrap_socket(conn, server_side=True)
        return conn, address

    def process_request(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: Any,
    ) -> None:
        """Start the connection's thread now, once a negotiation of its address ends, or
        never (closed at once)."""
        if self.guard is None or not isinstance(request, socket.socket):
            super().process_request(request, client_address)
            return

        def start() -> None:
            ThreadedAssociationServer.process_request(self, request, client_address)

        admission = self.guard.admit(request, peer_of(client_address), start)
        if admission is Admission.START:
            start()
        elif admission is Admission.REFUSE:
            self.shutdown_request(request)
