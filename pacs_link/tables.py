"""The PACS link's tables on the shared metadata: the outbox and per-peer state."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy import Index as SqlIndex

from radnode_core.index import UID, metadata

# Instances waiting for (or done with) delivery to a PACS peer (pacs_link.outbox): the
# node's SRs and, if configured, the originals it received. One row per peer and
# instance, so an instance is never queued twice; rows are never deleted by the sender.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("peer", String(32), nullable=False),
    Column("sop_instance_uid", UID, nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("kind", String(16), nullable=False),  # original | sr
    Column("state", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    UniqueConstraint("peer", "sop_instance_uid", name="uq_outbox_peer_instance"),
)
SqlIndex("ix_outbox_due", outbox.c.state, outbox.c.next_attempt_at)
SqlIndex("ix_outbox_study", outbox.c.study_uid)

# Small per-peer state that must survive restarts: the last /changes sequence number
# processed, the peer's last connection check (for /readyz).
pacs_state = Table(
    "pacs_state",
    metadata,
    Column("peer", String(32), primary_key=True),
    Column("key", String(32), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)
