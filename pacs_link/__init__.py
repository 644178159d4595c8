"""radnode beside a PACS: the outbox of results (STOW-RS or C-STORE), and following
the PACS's changes feed to fetch and analyse the studies it receives."""

from __future__ import annotations

from pacs_link.changes import ChangesFollower
from pacs_link.sender import OutboxSender
from radnode_core.node import Node


class PacsServices:
    """The outbox sender and one changes follower per followed peer (``serve``, ``worker``);
    nothing when the node has no PACS peer."""

    def __init__(self, node: Node) -> None:
        peers = node.settings.pacs_peers
        self.services: list[OutboxSender | ChangesFollower] = []
        if peers:
            self.services.append(OutboxSender(node))
            self.services += [ChangesFollower(node, p) for p in peers if p.follow_changes]

    def start(self) -> None:
        for service in self.services:
            service.start()

    def stop(self) -> None:
        for service in self.services:
            service.stop()
