"""What the retention policy needs from the outbox: which studies' results reached every
peer they were routed to, and when the last of them arrived (radnode_core.retention)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import case, func, select

from pacs_link.tables import outbox
from radnode_core.index import Index


def _epoch(value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite keeps no zone: the outbox writes UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def delivered_studies(index: Index) -> dict[str, float]:
    """``{study_uid: when its last outbox row was delivered}`` for the studies whose every
    row (SR and forwarded originals, to every routed peer) is delivered and that have an
    SR among them: the result reached the PACS. A row pending or failed, say of a newer
    version's SR, keeps the study out."""
    undelivered = func.sum(case((outbox.c.state != "delivered", 1), else_=0))
    srs = func.sum(case((outbox.c.kind == "sr", 1), else_=0))
    stmt = (
        select(outbox.c.study_uid, func.max(outbox.c.delivered_at))
        .group_by(outbox.c.study_uid)
        .having(undelivered == 0, srs > 0)
    )
    with index.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    found: dict[str, float] = {}
    for study_uid, delivered_at in rows:
        at = _epoch(delivered_at)
        if at is not None:
            found[study_uid] = at
    return found
