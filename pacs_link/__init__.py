"""radnode beside a PACS: the outbox of results (STOW-RS or C-STORE), and following
the PACS's changes feed to fetch and analyse the studies it receives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pacs_link.changes import ChangesFollower
from pacs_link.sender import OutboxSender
from radnode_core.node import Node


class PacsServices:
    """The outbox sender and one changes follower per followed peer (``serve``, ``worker``);
    nothing when the node has no PACS peer. Results this process queues for delivery wake
    its sender at once, rather than at its next poll; a study a follower queues calls
    ``on_queued`` (the process's worker's ``wake``)."""

    def __init__(self, node: Node, on_queued: Callable[[], None] | None = None) -> None:
        peers = node.settings.pacs_peers
        self.services: list[OutboxSender | ChangesFollower] = []
        if peers:
            sender = OutboxSender(node)
            self.services.append(sender)
            self.services += [
                ChangesFollower(node, p, on_queued) for p in peers if p.follow_changes
            ]
            queue = node.deliver
            if queue is not None:

                def deliver(*args: Any, **kwargs: Any) -> Any:
                    queued = queue(*args, **kwargs)
                    sender.wake()
                    return queued

                node.deliver = deliver

    def start(self) -> None:
        for service in self.services:
            service.start()

    def stop(self) -> None:
        for service in self.services:
            service.stop()
