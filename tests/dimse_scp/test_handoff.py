"""Connections handed from the accepting process to receivers (:mod:`dimse_scp.handoff`):
real TCP connections on 127.0.0.1 and real Unix socket pairs, receivers as threads."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator

import pytest

from dimse_scp.handoff import (
    ChannelClosed,
    Dispatcher,
    ReceiverLoad,
    channel_pair,
    receive_connection,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix descriptor passing")


class Receiver:
    """A receiver's side: takes connections off its channel, as a receiver process does."""

    def __init__(self) -> None:
        self.mine, self.theirs = channel_pair()
        self.load = ReceiverLoad(self.theirs)
        self.ready = True
        self.connections: list[socket.socket] = []

    def is_ready(self) -> bool:
        return self.ready

    def take(self) -> socket.socket:
        conn, _address = receive_connection(self.theirs)
        self.load.taken()
        self.connections.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        self.mine.close()
        self.theirs.close()


class Port:
    """A listening port on 127.0.0.1, its dispatcher, receivers 1..n, and the clients."""

    def __init__(self, receivers: int) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.unplaced = 0
        self.dispatcher = Dispatcher({"dicom": self.listener}, on_unplaced=self._unplaced)
        self.receivers = {slot: Receiver() for slot in range(1, receivers + 1)}
        for slot, receiver in self.receivers.items():
            self.dispatcher.add(slot, {"dicom": receiver.mine}, receiver.is_ready)
        self.clients: list[socket.socket] = []

    def _unplaced(self) -> None:
        self.unplaced += 1

    def connect(self) -> socket.socket:
        client = socket.create_connection(self.listener.getsockname(), timeout=10)
        self.clients.append(client)
        return client

    def hand(self) -> int | None:
        """A new connection, accepted and handed over as the dispatcher's thread does."""
        self.connect()
        conn, _ = self.listener.accept()
        with conn:
            return self.dispatcher.hand_off(conn, "dicom")

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.dispatcher.close()
        for receiver in self.receivers.values():
            receiver.close()


@pytest.fixture
def port(request: pytest.FixtureRequest) -> Iterator[Port]:
    made = Port(getattr(request, "param", 1))
    yield made
    made.close()


def test_the_receiver_gets_the_connection_itself(port: Port) -> None:
    assert port.hand() == 1
    client = port.clients[0]
    conn = port.receivers[1].take()
    assert conn.getpeername() == client.getsockname()
    client.sendall(b"A-ASSOCIATE-RQ")
    assert conn.recv(64) == b"A-ASSOCIATE-RQ"
    conn.sendall(b"A-ASSOCIATE-AC")
    assert client.recv(64) == b"A-ASSOCIATE-AC"
    conn.close()
    assert client.recv(64) == b""  # the dispatcher kept no copy open


@pytest.mark.parametrize("port", [3], indirect=True)
def test_each_connection_goes_to_the_least_busy_receiver(port: Port) -> None:
    one, two, three = port.receivers.values()
    assert sorted(port.hand() or 0 for _ in range(3)) == [1, 2, 3]  # one each, any order
    # Two more for receiver 1 while the others are not ready.
    two.ready = three.ready = False
    assert [port.hand(), port.hand()] == [1, 1]
    two.ready = three.ready = True
    # Receiver 1 takes its three and serves one; receiver 3 serves its one to the end;
    # receiver 2 has not taken its one yet.
    for _ in range(3):
        one.take()
    one.load.opened("association 1")
    three.take()
    three.load.opened("association 2")
    three.load.closed("association 2")
    assert port.dispatcher.loads() == {1: 1, 2: 1, 3: 0}
    assert port.hand() == 3
    # All have one: the tie goes to the one handed a connection longest ago, 2.
    assert port.hand() == 2


@pytest.mark.parametrize("port", [3], indirect=True)
def test_a_receiver_that_is_gone_or_not_ready_is_passed_over(port: Port) -> None:
    gone, starting, running = port.receivers.values()
    gone.theirs.close()  # the process died
    starting.ready = False
    assert [port.hand() for _ in range(3)] == [3, 3, 3]
    for _ in range(3):
        running.take()
    # With none ready that can take it, one still starting holds it until it serves.
    running.ready = False
    assert port.hand() in (2, 3)
    assert port.unplaced == 0


def test_a_connection_no_receiver_can_take_is_closed(port: Port) -> None:
    port.receivers[1].theirs.close()
    assert port.hand() is None
    assert port.unplaced == 1
    assert port.clients[0].recv(64) == b""  # closed, not left hanging


@pytest.mark.parametrize("port", [2], indirect=True)
def test_the_dispatcher_thread_accepts_a_burst_and_stops(port: Port) -> None:
    port.dispatcher.start()
    for _ in range(10):
        port.connect()
    # Handed over, none taken yet: five each.
    wait_for(lambda: port.dispatcher.loads() == {1: 5, 2: 5}, timeout=10, what="ten handed over")
    taken = dict.fromkeys(port.receivers, 0)

    def drain(slot: int) -> None:
        for _ in range(5):
            port.receivers[slot].take()
            taken[slot] += 1

    threads = [threading.Thread(target=drain, args=(slot,)) for slot in port.receivers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert taken == {1: 5, 2: 5}
    wait_for(lambda: port.dispatcher.loads() == {1: 0, 2: 0}, timeout=10, what="the reports")
    port.dispatcher.stop()
    with pytest.raises(OSError):
        port.connect()  # the port is closed


def test_a_message_without_a_connection_is_refused() -> None:
    mine, theirs = channel_pair()
    try:
        mine.send(b"X")
        with pytest.raises(OSError, match="unexpected message"):
            receive_connection(theirs)
        r, w = socket.socketpair()
        socket.send_fds(mine, [b"X"], [r.fileno()])
        with pytest.raises(OSError, match="unexpected message"):
            receive_connection(theirs)
        r.close()
        w.close()
        mine.close()
        with pytest.raises(ChannelClosed):
            receive_connection(theirs)
    finally:
        theirs.close()


@pytest.mark.parametrize("port", [2], indirect=True)
def test_a_connection_whose_thread_died_stops_counting(port: Port) -> None:
    one = port.receivers[1]
    ended: set[str] = set()
    one.load = ReceiverLoad(one.theirs, alive=lambda c: c not in ended)
    assert port.hand() == 1
    one.take()
    one.load.opened("association 1")
    assert port.dispatcher.loads() == {1: 1, 2: 0}
    # Its thread ends without a close (an exception in the stack): the next report,
    # whatever triggers it, no longer counts it.
    ended.add("association 1")
    one.load.opened("association 2")
    assert one.load.serving == 1
    assert port.dispatcher.loads() == {1: 1, 2: 0}
