"""radnode beside a PACS: the outbox of results (STOW-RS or C-STORE), and following
the PACS's changes feed to fetch and analyse the studies it receives."""

from __future__ import annotations

from typing import Any


def start(node: Any) -> list[Any]:
    """Start the outbox sender and one changes follower per followed peer (``serve``,
    ``worker``); returns them for the caller to stop."""
    from pacs_link.changes import ChangesFollower
    from pacs_link.sender import OutboxSender

    peers = node.settings.pacs_peers
    if not peers:
        return []
    services: list[Any] = [OutboxSender(node)]
    services += [ChangesFollower(node, p) for p in peers if p.follow_changes]
    for service in services:
        service.start()
    return services
