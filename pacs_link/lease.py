"""One holder at a time for work that must not run in every replica (the PACS changes
follower): a lease row in the index that its holder renews and anyone may take over
once it has expired.

Every ``radnode worker`` (and ``serve``) starts the PACS services; with several
workers on one PostgreSQL index only the lease holder follows a peer's changes feed,
so a study is fetched once, not once per worker. A holder that dies stops renewing
and another process takes over after ``ttl_s``; a clean stop releases the lease at
once. Works the same on SQLite (one process) and PostgreSQL (row lock on the lease
row; the first insert is ``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import os
import socket
import time
import uuid

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from pacs_link.tables import pacs_state
from radnode_core.index import Index


def holder_id() -> str:
    """This process, readable in the index: host, pid and a random suffix."""
    return f"{socket.gethostname()[:12]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Lease:
    """The lease ``key`` of ``peer`` in ``pacs_state``: value ``{"holder": id}``,
    ``updated_at`` the time of the holder's last renewal."""

    def __init__(self, index: Index, peer: str, key: str, ttl_s: float, holder: str | None = None):
        self.index = index
        self.peer = peer
        self.key = key
        self.ttl_s = ttl_s
        self.holder = holder or holder_id()

    def acquire(self, now: float | None = None) -> bool:
        """Take or renew the lease; False while another holder's lease is current."""
        now = time.time() if now is None else now
        where = (pacs_state.c.peer == self.peer, pacs_state.c.key == self.key)
        mine = {"holder": self.holder}
        with self.index.transaction() as conn:
            row = conn.execute(
                select(pacs_state.c.value, pacs_state.c.updated_at).where(*where).with_for_update()
            ).first()
            if row is None:
                dialect = sqlite if self.index.is_sqlite else postgresql
                inserted = conn.execute(
                    dialect.insert(pacs_state)
                    .values(peer=self.peer, key=self.key, value=mine, updated_at=now)
                    .on_conflict_do_nothing(index_elements=["peer", "key"])
                    .returning(pacs_state.c.peer)
                )
                return inserted.first() is not None
            held_by = (row.value or {}).get("holder")
            if held_by != self.holder and row.updated_at + self.ttl_s > now:
                return False
            conn.execute(update(pacs_state).where(*where).values(value=mine, updated_at=now))
            return True

    def release(self) -> None:
        """Give the lease up now (clean stop), if this process holds it."""
        with self.index.transaction() as conn:
            row = conn.execute(
                select(pacs_state.c.value)
                .where(pacs_state.c.peer == self.peer, pacs_state.c.key == self.key)
                .with_for_update()
            ).first()
            if row is not None and (row.value or {}).get("holder") == self.holder:
                conn.execute(
                    update(pacs_state)
                    .where(pacs_state.c.peer == self.peer, pacs_state.c.key == self.key)
                    .values(value={"holder": None}, updated_at=0.0)
                )
