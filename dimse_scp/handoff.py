"""Accepted connections handed from one process to several receivers, each to the least busy.

With several receiver processes on one DICOM port, one process listens and accepts, and
passes each new connection's descriptor (``SCM_RIGHTS``, :func:`socket.send_fds`) to the
receiver serving the fewest connections. Linux's ``SO_REUSEPORT`` would let the receivers
listen side by side, but the kernel picks a listener by a hash of the connection's
addresses, whatever its load: two of four modalities then often share one receiver's
interpreter lock while another receiver idles (``docs/benchmarks.md``). Descriptor passing
is plain Unix, so this also runs where ``SO_REUSEPORT`` does not spread connections.

Each receiver has one channel per port, a ``SOCK_SEQPACKET`` socket pair (one message per
send, in order):

* to the receiver: one byte with the connection's descriptor attached
  (:meth:`Dispatcher.hand_off`, :func:`receive_connection`);
* from the receiver: its :class:`Load`, the number of connections it has taken off the
  channel and the number it is serving, after each change (:class:`ReceiverLoad`). The
  dispatcher counts as busy what a receiver serves plus what it was handed and has not
  yet taken, so a lost or late report only delays the count, never skews it for good.

A connection being served is one whose association runs: one that the negotiation guard
holds back (too many from its address at once) is not counted.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

_CONNECTION = b"C"
_LOAD = struct.Struct("=QI")
"""A receiver's report: connections taken off the channel (ever), connections served now."""

LISTEN_BACKLOG = 128
"""The listen backlog of the dispatcher's ports, as the association server's own."""


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A channel: (the dispatcher's end, the receiver's end)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def can_hand_off() -> bool:
    """Whether this system can pass descriptors between processes (Unix, not Windows)."""
    return hasattr(socket, "send_fds") and hasattr(socket, "AF_UNIX")


class ChannelClosed(OSError):
    """The dispatcher's end of the channel is closed."""


def receive_connection(channel: socket.socket) -> tuple[socket.socket, Any]:
    """The next connection on ``channel`` and its peer's address (blocking).

    Raises :class:`ChannelClosed` at the end of the channel, and :class:`OSError` for a
    message without a descriptor or a connection already reset."""
    message, fds, _flags, _address = socket.recv_fds(channel, 16, 4)
    if not message and not fds:
        raise ChannelClosed("the dispatcher's end of the channel is closed")
    connections = [socket.socket(fileno=fd) for fd in fds]
    if message != _CONNECTION or len(connections) != 1:
        for sock in connections:
            sock.close()
        raise OSError(f"unexpected message on the connection channel: {message!r}")
    sock = connections[0]
    try:
        sock.setblocking(True)
        address = sock.getpeername()
    except OSError:
        sock.close()  # reset while it was being handed over
        raise
    return sock, address


class ReceiverLoad:
    """A receiver's side of the load reports: ``taken`` when a connection comes off the
    channel, ``opened`` and ``closed`` around each connection it serves. A connection whose
    ``alive`` says it has ended without ``closed`` (its thread died) stops counting at the
    next report."""

    def __init__(
        self, channel: socket.socket, alive: Callable[[Hashable], bool] = lambda _c: True
    ) -> None:
        self.channel = channel
        self.alive = alive
        self._taken = 0
        self._serving: set[Hashable] = set()
        self._lock = threading.Lock()

    def taken(self) -> None:
        with self._lock:
            self._taken += 1
            self._report()

    def opened(self, connection: Hashable) -> None:
        with self._lock:
            self._serving.add(connection)
            self._report()

    def closed(self, connection: Hashable) -> None:
        with self._lock:
            self._serving.discard(connection)
            self._report()

    @property
    def serving(self) -> int:
        with self._lock:
            return len(self._serving)

    def _report(self) -> None:
        """Send the counts (lock held, so reports go out in order). A full channel or a
        dispatcher gone drops the report; the next one carries the counts."""
        self._serving = {c for c in self._serving if self.alive(c)}
        try:
            self.channel.send(_LOAD.pack(self._taken, len(self._serving)), socket.MSG_DONTWAIT)
        except OSError:
            pass


@dataclass(eq=False)
class _Channel:
    sock: socket.socket
    handed: int = 0
    taken: int = 0
    serving: int = 0

    @property
    def load(self) -> int:
        return self.serving + self.handed - self.taken

    def read_reports(self) -> None:
        """Take every report waiting on the channel; the last one counts."""
        while True:
            try:
                report = self.sock.recv(_LOAD.size, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # the receiver is gone; the supervisor replaces its channels
            if len(report) != _LOAD.size:
                return
            self.taken, self.serving = _LOAD.unpack(report)


@dataclass(eq=False)
class _Receiver:
    slot: int
    channels: dict[str, _Channel]
    ready: Callable[[], bool]
    last_handed: int = 0

    @property
    def load(self) -> int:
        return sum(channel.load for channel in self.channels.values())


@dataclass(eq=False)
class Dispatcher:
    """Accepts on ``listeners`` (a name for each port: ``dicom``, ``tls``) in a thread of
    its own and hands each connection to the least busy receiver that is ready (ties: the
    one handed a connection longest ago), or, when none can take it, to one still starting:
    its channel holds the connection until it serves. A connection no receiver can take is
    closed (the sender retries)."""

    listeners: dict[str, socket.socket]
    poll_s: float = 0.2
    on_unplaced: Callable[[], None] | None = None
    _receivers: dict[int, _Receiver] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _handed: int = 0

    def add(self, slot: int, channels: dict[str, socket.socket], ready: Callable[[], bool]) -> None:
        """Hand connections to receiver ``slot`` through ``channels`` (the dispatcher's ends,
        one per listener) once ``ready()``; replaces that slot's earlier channels."""
        if set(channels) != set(self.listeners):
            raise ValueError(f"one channel per listener needed: {sorted(self.listeners)}")
        receiver = _Receiver(slot, {name: _Channel(s) for name, s in channels.items()}, ready)
        with self._lock:
            previous = self._receivers.get(slot)
            self._receivers[slot] = receiver
        if previous is not None:
            _close_channels(previous)

    def remove(self, slot: int) -> None:
        with self._lock:
            previous = self._receivers.pop(slot, None)
        if previous is not None:
            _close_channels(previous)

    def loads(self) -> dict[int, int]:
        """Each receiver's connections, served or on their way (as the last reports say)."""
        with self._lock:
            for receiver in self._receivers.values():
                for channel in receiver.channels.values():
                    channel.read_reports()
            return {receiver.slot: receiver.load for receiver in self._receivers.values()}

    def start(self) -> None:
        for sock in self.listeners.values():
            sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="radnode-scp-dispatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close the ports; connections already handed over stay with
        their receivers, and the channels stay open until :meth:`close`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for sock in self.listeners.values():
            sock.close()

    def close(self) -> None:
        """Close every channel (the receivers have stopped)."""
        self.stop()
        with self._lock:
            receivers = list(self._receivers.values())
            self._receivers.clear()
        for receiver in receivers:
            _close_channels(receiver)

    # -- the accept thread -----------------------------------------------------------

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for name, sock in self.listeners.items():
                selector.register(sock, selectors.EVENT_READ, name)
            while not self._stop.is_set():
                for key, _events in selector.select(self.poll_s):
                    self._accept_all(key.fileobj, key.data)  # type: ignore[arg-type]
                self.loads()  # keep the channels' reports drained while idle

    def _accept_all(self, listener: socket.socket, name: str) -> None:
        """Accept every connection waiting on ``listener`` (a burst lands in one wake-up)."""
        while not self._stop.is_set():
            try:
                conn, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # reset before it was accepted
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.error("cannot accept a DICOM connection", extra={"error": str(exc)})
                    self._stop.wait(self.poll_s)
                    return
                raise
            with conn:
                self.hand_off(conn, name)

    def hand_off(self, conn: socket.socket, name: str) -> int | None:
        """Pass ``conn`` (accepted on listener ``name``) to the least busy receiver; returns
        its slot, or None when no receiver could take it. The caller closes its own copy."""
        loads = self.loads()
        with self._lock:
            receivers = list(self._receivers.values())
        # Ready ones first, least busy first; then those still starting.
        order = sorted(receivers, key=lambda r: (not r.ready(), loads[r.slot], r.last_handed))
        for receiver in order:
            channel = receiver.channels[name]
            try:
                socket.send_fds(channel.sock, [_CONNECTION], [conn.fileno()], socket.MSG_DONTWAIT)
            except OSError:
                continue  # gone (its replacement gets a new channel) or not reading
            channel.handed += 1
            self._handed += 1
            receiver.last_handed = self._handed
            return receiver.slot
        logger.warning("DICOM connection closed: no receiver process can take it")
        if self.on_unplaced is not None:
            self.on_unplaced()
        return None


def _close_channels(receiver: _Receiver) -> None:
    for channel in receiver.channels.values():
        channel.sock.close()
